#!/usr/bin/env python3
"""Make a LogSAD backbone folder for another input size, sharing the source's weights.

    python3 models/prepare_resolution.py --source .deps/models/dinov2-vits14-224 --size 448 \
        --out .deps/models/dinov2-vits14-448

The default model's graph (models/prepare_default.py) computes its patch grid and resizes its
37x37 position table (bicubic, half-pixel, as DINOv2's `interpolate_pos_encoding` in Hugging
Face transformers) from the input's shape; only the declared input and output dimensions fix it
at 224. This script writes a graph identical to the source's except for those declared
dimensions (`size` x `size`, `1 + (size/14)^2` tokens), whose initializers are *external data*
pointing into the source's `model.onnx` at the byte offsets where the source stores them: the
weights are not copied (a few MB of graph instead of another 88 MB).

The folder also gets a hard link `weights.onnx` to the source's model file: ONNX Runtime only
reads external data inside the model's folder. Where a hard link cannot be made (another file
system), the file is copied.

The new manifest is the source's with `input.width/height` = `size`, the grid
`size / patch_size`, and its own `name` (`dinov2-vits14-<size>` from `...-224`, or
`<source name>-<size>`), so profiles of the two never mix. The source's sha256 is recorded in
the graph's metadata, so the new file's hash, which profiles record, changes with the weights.

Idempotent: nothing is rebuilt when `model.onnx` is newer than the source and records the
source's hash; `--force` rebuilds. Unless `--no-verify`, onnxruntime runs the new model on a
random batch of 2 and checks every stage's shape and that images of a batch do not mix.
"""

import argparse
import json
import os
import re
import shutil
import sys
import time

from _modelkit import AtomicPath, manifest_text, require, sha256_file, write_if_changed

WEIGHTS = "weights.onnx"


def parse_args():
    p = argparse.ArgumentParser(
        description="Write a LogSAD backbone folder for another input size whose graph reads "
        "the source model's weights in place.")
    p.add_argument("--source", required=True, help="folder of the source model (manifest.json)")
    p.add_argument("--size", type=int, required=True, help="input side in pixels, e.g. 448")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", help="model name (default: derived from the source's and --size)")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    return p.parse_args()


def default_name(source_name, size):
    m = re.fullmatch(r"(.*-)\d+(-.*)?", source_name)
    if m:
        return "%s%d%s" % (m.group(1), size, m.group(2) or "")
    return "%s-%d" % (source_name, size)


def raw_data_offsets(path):
    """{initializer name: (offset, length)} of each initializer's raw_data inside the file.

    Walks the protobuf wire format of ModelProto (field 7 graph) -> GraphProto (field 5
    initializer) -> TensorProto (field 8 name, field 9 raw_data) without copying the file.
    """
    with open(path, "rb") as f:
        buf = memoryview(f.read())

    def varint(pos):
        value = shift = 0
        while True:
            b = buf[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value, pos

    def fields(start, end):
        pos = start
        while pos < end:
            key, pos = varint(pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = varint(pos)
                continue
            if wire == 1:
                pos += 8
                continue
            if wire == 5:
                pos += 4
                continue
            if wire != 2:
                raise SystemExit("%s: unexpected protobuf wire type %d" % (path, wire))
            length, pos = varint(pos)
            yield number, pos, pos + length
            pos += length

    offsets = {}
    for number, gs, ge in fields(0, len(buf)):
        if number != 7:
            continue
        for gnum, ts, te in fields(gs, ge):
            if gnum != 5:
                continue
            name, raw = None, None
            for tnum, s, e in fields(ts, te):
                if tnum == 8:
                    name = bytes(buf[s:e]).decode("utf-8")
                elif tnum == 9:
                    raw = (s, e - s)
            if name is not None and raw is not None:
                offsets[name] = raw
    return offsets


def set_dims(value_info, dims):
    shape = value_info.type.tensor_type.shape
    for d, want in zip(shape.dim, dims):
        if want is not None:
            d.Clear()
            d.dim_value = want


def build(source_path, manifest, size, weights_sha):
    import onnx
    from onnx import TensorProto
    model = onnx.load(source_path)
    offsets = raw_data_offsets(source_path)
    external = 0
    for t in model.graph.initializer:
        if t.name not in offsets:
            continue  # stored in typed fields, not raw_data: small, kept in the graph
        offset, length = offsets[t.name]
        if len(t.raw_data) != length:
            raise SystemExit("initializer %s: raw_data offset does not match" % t.name)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", WEIGHTS), ("offset", str(offset)), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = k, v
        external += 1
    grid = size // manifest["tokens"]["patch_size"]
    tokens = manifest["tokens"]["prefix_tokens"] + grid * grid
    name = manifest["input"]["name"]
    for i in model.graph.input:
        if i.name == name:
            set_dims(i, [None, 3, size, size])
    for o in model.graph.output:
        set_dims(o, [None, tokens, manifest["feature_dim"]])
    # Declared shapes of intermediate values were inferred for the source size.
    del model.graph.value_info[:]
    for k, v in (("logsad.input_size", str(size)),
                 ("logsad.weights", "external data in %s = %s, sha256 %s"
                  % (WEIGHTS, manifest["onnx"], weights_sha))):
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    print("%d initializers read from %s in place" % (external, WEIGHTS))
    return model


def link_weights(source_path, weights_path):
    if os.path.exists(weights_path):
        if os.path.samefile(source_path, weights_path):
            return
        os.remove(weights_path)
    try:
        os.link(source_path, weights_path)
    except OSError as e:
        print("cannot hard-link %s (%s): copying it" % (source_path, e))
        shutil.copyfile(source_path, weights_path)


def verify(path, manifest, size, tokens):
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not importable: skipping the numeric check")
        return
    import numpy as np
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    x = np.random.RandomState(0).standard_normal((2, 3, size, size)).astype(np.float32)
    names = manifest["stage_outputs"]
    outs = sess.run(names, {manifest["input"]["name"]: x})
    for n, o in zip(names, outs):
        print("  %s: %s" % (n, list(o.shape)))
        if o.shape != (2, tokens, manifest["feature_dim"]) or not np.isfinite(o).all():
            raise SystemExit("%s has shape %s or non-finite values" % (n, o.shape))
    single = sess.run(names[-1:], {manifest["input"]["name"]: x[1:2]})[0]
    d = float(np.abs(single[0] - outs[-1][1]).max())
    print("  batch of 1 vs batch of 2: max |diff| = %.3g" % d)
    if d > 1e-3:
        raise SystemExit("batch results depend on the other images in the batch")


def main():
    args = parse_args()
    start = time.time()
    src_dir, out_dir = os.path.abspath(args.source), os.path.abspath(args.out)
    with open(os.path.join(src_dir, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    patch = manifest["tokens"]["patch_size"]
    if args.size <= 0 or args.size % patch:
        raise SystemExit("--size %d is not a positive multiple of the patch size %d"
                         % (args.size, patch))
    if manifest["input"]["width"] != manifest["input"]["height"]:
        raise SystemExit("the source model's input is not square")
    require("numpy", "onnx")
    source_path = os.path.join(src_dir, manifest["onnx"])
    out_path = os.path.join(out_dir, "model.onnx")
    weights_path = os.path.join(out_dir, WEIGHTS)
    os.makedirs(out_dir, exist_ok=True)
    source_sha = sha256_file(source_path)
    grid = args.size // patch
    tokens = manifest["tokens"]["prefix_tokens"] + grid * grid

    up_to_date = False
    if (os.path.isfile(out_path) and os.path.isfile(weights_path)
            and os.path.getmtime(out_path) > os.path.getmtime(source_path)):
        import onnx
        meta = {p.key: p.value for p in onnx.load(out_path, load_external_data=False).metadata_props}
        up_to_date = source_sha in meta.get("logsad.weights", "")
    if up_to_date and not args.force:
        link_weights(source_path, weights_path)
        print("%s is up to date: nothing to do (use --force to rebuild)" % out_path)
    else:
        link_weights(source_path, weights_path)
        import onnx
        model = build(source_path, manifest, args.size, source_sha)
        with AtomicPath(out_path) as tmp:
            onnx.save(model, tmp)
            del model
            if not args.no_verify:
                verify(tmp, manifest, args.size, tokens)

    out = json.loads(json.dumps(manifest))
    out["name"] = args.name or default_name(manifest["name"], args.size)
    out["onnx"] = "model.onnx"
    out["input"]["width"] = out["input"]["height"] = args.size
    out["tokens"]["grid_width"] = out["tokens"]["grid_height"] = grid
    out["description"] = (
        "%s run at %dx%d input (%dx%d patch grid; position table resized in the graph), weights "
        "read in place from the source model file; written by models/prepare_resolution.py. "
        "Source: %s" % (manifest["name"], args.size, args.size, grid, grid,
                        manifest.get("description", "")))
    if write_if_changed(os.path.join(out_dir, "manifest.json"), manifest_text(out)):
        print("wrote %s" % os.path.join(out_dir, "manifest.json"))
    print("%s  %s (%d bytes)" % (sha256_file(out_path), out_path, os.path.getsize(out_path)))
    print("done in %.1f s" % (time.time() - start))


if __name__ == "__main__":
    sys.exit(main())
