#!/usr/bin/env python3
"""Quantise a LogSAD backbone to int8 with ONNX Runtime's own tools, calibrated on nominal images.

    python3 models/quantize_int8.py --source .deps/models/dinov2-vits14-224 \
        --calibration .deps/data/textile/nominal --out .deps/models/dinov2-vits14-224-int8

Static quantisation (`onnxruntime.quantization.quantize_static`): activation ranges come from
running the float model on the first `--count` images of `--calibration` (sorted by name),
prepared exactly as the plugin prepares frames (models/_calibration.py). The default recipe
was chosen on the textile tuning split (models/README.md, "int8 backbone"): QDQ format, int8
weights per output channel, uint8 activations, MinMax ranges, and only the MatMuls whose second
operand is a weight quantised; LayerNorm, Softmax, GELU, the attention products (activation by
activation) and the patch embedding stay float32.

The output folder gets `model.onnx` and a `manifest.json` copied from the source's with its own
`name` (`<source name>-int8` by default): a profile enrolled with the float model is refused by
this one and the other way round. The recipe and the calibration set are recorded in the ONNX
metadata (`logsad.*`), so the file's hash changes with them.

Idempotent: when `model.onnx` is newer than the source model and records the same recipe and
calibration, nothing is done except refreshing the manifest. `--force` rebuilds. Unless
`--no-verify`, the result is compared with the float model on held-out nominal images (the
`--count` images after the calibration ones): cosine similarity of every patch token of every
stage, which must reach `--min-cosine` on average per stage.

Needs numpy, onnx, onnxruntime and Pillow (the set-up installs them into .deps/venv).
"""

import argparse
import json
import os
import sys
import time

from _modelkit import AtomicPath, manifest_text, require, sha256_file, write_if_changed

RECIPES = {
    # name: (quant format, per-channel, op types, keep the attention products in float)
    "qdq-weights": ("QDQ", True, ["MatMul"], True),
    "qdq-all-matmul": ("QDQ", True, ["MatMul"], False),
    "qoperator-weights": ("QOperator", True, ["MatMul"], True),
    "qdq-weights-conv": ("QDQ", True, ["MatMul", "Conv"], True),
    "qdq-weights-per-tensor": ("QDQ", False, ["MatMul"], True),
    # Weights only, activations quantised on the fly per inference (no calibration needed).
    "dynamic": ("dynamic", True, ["MatMul"], True),
}
DEFAULT_RECIPE = "qdq-weights"


def parse_args():
    p = argparse.ArgumentParser(
        description="Quantise a LogSAD backbone folder (manifest.json + model) to int8 with "
        "onnxruntime.quantization, calibrated on nominal images.")
    p.add_argument("--source", required=True, help="folder of the float model (with manifest.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--calibration", required=True,
                   help="folder of nominal images; the first --count by name calibrate")
    p.add_argument("--count", type=int, default=32,
                   help="calibration images (default 32); as many after them check the result")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE,
                   help="quantisation recipe (default %s)" % DEFAULT_RECIPE)
    p.add_argument("--name", help="model name for the manifest (default: source name + '-int8')")
    p.add_argument("--min-cosine", type=float, default=0.95,
                   help="least mean cosine similarity to the float model's tokens, per stage")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with the float model")
    return p.parse_args()


def weight_matmuls(model, keep_attention_float):
    """Names of the MatMul nodes to leave in float: those with no initializer operand when
    `keep_attention_float` (Q.K^T and attention.V multiply two activations)."""
    if not keep_attention_float:
        return []
    inits = {t.name for t in model.graph.initializer}
    constants = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in inits or i in constants for i in n.input)]


class ImageReader:
    """CalibrationDataReader over preprocessed images (built lazily: onnxruntime imported)."""

    def __init__(self, paths, manifest):
        self.paths = list(paths)
        self.manifest = manifest
        self.input_name = manifest["input"]["name"]

    def get_next(self):
        from _calibration import load_tensor
        if not self.paths:
            return None
        return {self.input_name: load_tensor(self.paths.pop(0), self.manifest)}

    def rewind(self):
        raise NotImplementedError("the calibration images are read once")


def quantise(source_model, tmp, recipe, calibration, manifest):
    import onnx
    from onnxruntime import quantization as q
    fmt, per_channel, ops, keep_attention = RECIPES[recipe]
    exclude = weight_matmuls(onnx.load(source_model, load_external_data=False), keep_attention)
    if fmt == "dynamic":
        q.quantize_dynamic(source_model, tmp, per_channel=per_channel, weight_type=q.QuantType.QInt8,
                           op_types_to_quantize=ops, nodes_to_exclude=exclude)
        return
    q.quantize_static(
        source_model, tmp, ImageReader(calibration, manifest),
        quant_format=q.QuantFormat.QDQ if fmt == "QDQ" else q.QuantFormat.QOperator,
        op_types_to_quantize=ops, nodes_to_exclude=exclude, per_channel=per_channel,
        activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
        calibrate_method=q.CalibrationMethod.MinMax)


def stamp(path, entries):
    """Adds `logsad.*` metadata to the ONNX file at `path`, in place."""
    import onnx
    model = onnx.load(path)
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in entries.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.save(model, path)


def cosine_by_stage(float_path, int8_path, manifest, images):
    """Mean and least cosine similarity of the patch tokens of each stage, over `images`."""
    import numpy as np
    import onnxruntime as ort
    from _calibration import load_tensor
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    a = ort.InferenceSession(float_path, opts, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(int8_path, opts, providers=["CPUExecutionProvider"])
    names = manifest["stage_outputs"]
    prefix = manifest["tokens"]["prefix_tokens"]
    sims = {n: [] for n in names}
    for path in images:
        x = {manifest["input"]["name"]: load_tensor(path, manifest)}
        for n, fa, fb in zip(names, a.run(names, x), b.run(names, x)):
            fa, fb = fa[0, prefix:].astype(np.float64), fb[0, prefix:].astype(np.float64)
            c = (fa * fb).sum(-1) / (np.linalg.norm(fa, axis=-1) * np.linalg.norm(fb, axis=-1))
            sims[n].append(c)
    return {n: (float(np.concatenate(v).mean()), float(np.concatenate(v).min()))
            for n, v in sims.items()}


def main():
    args = parse_args()
    start = time.time()
    src_dir, out_dir = os.path.abspath(args.source), os.path.abspath(args.out)
    with open(os.path.join(src_dir, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    source_model = os.path.join(src_dir, manifest["onnx"])
    out_path = os.path.join(out_dir, "model.onnx")
    if args.count < 1:
        raise SystemExit("--count must be at least 1")
    require("numpy", "onnx", "onnxruntime", "PIL")
    from _calibration import list_images
    # The calibration images, then as many held out for the check.
    images = list_images(args.calibration, 2 * args.count)
    calibration, held_out = images[:args.count], images[args.count:]
    recorded = {
        "logsad.quantisation": "int8 %s (onnxruntime.quantization)" % args.recipe,
        "logsad.source_name": manifest["name"],
        "logsad.source_sha256": sha256_file(source_model),
        "logsad.calibration": "%s: %s .. %s (%d images)" % (
            os.path.basename(os.path.normpath(args.calibration)), os.path.basename(calibration[0]),
            os.path.basename(calibration[-1]), len(calibration)),
    }
    up_to_date = False
    if os.path.isfile(out_path) and os.path.getmtime(out_path) > os.path.getmtime(source_model):
        import onnx
        meta = {p.key: p.value
                for p in onnx.load(out_path, load_external_data=False).metadata_props}
        up_to_date = all(meta.get(k) == v for k, v in recorded.items())
    os.makedirs(out_dir, exist_ok=True)
    if up_to_date and not args.force:
        print("%s is up to date (recipe %s): nothing to do (use --force to rebuild)"
              % (out_path, args.recipe))
    else:
        print("quantising %s with recipe %s, calibrated on %s"
              % (source_model, args.recipe, recorded["logsad.calibration"]))
        with AtomicPath(out_path) as tmp:
            quantise(source_model, tmp, args.recipe, calibration, manifest)
            stamp(tmp, recorded)
            if not args.no_verify:
                sims = cosine_by_stage(source_model, tmp, manifest, held_out)
                for n, (mean, least) in sims.items():
                    print("  %s: cosine to float, mean %.4f, least %.4f (%d held-out images)"
                          % (n, mean, least, len(held_out)))
                bad = [n for n, (mean, _) in sims.items() if mean < args.min_cosine]
                if bad:
                    raise SystemExit("stages %s are below a mean cosine of %g to the float model"
                                     % (", ".join(bad), args.min_cosine))

    out_manifest = dict(manifest)
    out_manifest["name"] = args.name or manifest["name"] + "-int8"
    out_manifest["onnx"] = "model.onnx"
    out_manifest["description"] = (
        "%s quantised to int8 by models/quantize_int8.py (recipe %s, onnxruntime.quantization "
        "static QDQ/QOperator or dynamic; calibrated on %s). Source: %s"
        % (manifest["name"], args.recipe, recorded["logsad.calibration"],
           manifest.get("description", "")))
    if write_if_changed(os.path.join(out_dir, "manifest.json"), manifest_text(out_manifest)):
        print("wrote %s" % os.path.join(out_dir, "manifest.json"))
    print("%s  %s (%d bytes)" % (sha256_file(out_path), out_path, os.path.getsize(out_path)))
    print("done in %.1f s" % (time.time() - start))


if __name__ == "__main__":
    sys.exit(main())
