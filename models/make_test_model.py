#!/usr/bin/env python3
"""Write a tiny, deterministic ViT-like ONNX model and its manifest, for tests.

The model honours the same contract as the real backbones (models/README.md) at a
size of a few kilobytes, so tests can exercise the whole pipeline without the
88 MB default model and without a GPU:

    pixel_values [B, 3, H, W]
      -> Conv (kernel = stride = patch)          patch embedding, [B, D, gh, gw]
      -> Reshape + Transpose + position table    [B, gh*gw, D]
      -> prefix tokens (mean of patches + table) [B, prefix + gh*gw, D]
      -> per stage: x = x + tanh(x @ W_k + b_k)  stage1 .. stageN

Every stage works token by token, so a patch token depends only on the pixels
of its own patch (and its position): a defect changes exactly the tokens of
the patches it touches, which gives tests a sharp expectation.  The prefix
tokens average all patches, like a class token that sees the whole image.

    python3 models/make_test_model.py --out /tmp/tiny [--size 28 --patch 14 --dim 8
        --stages 4 --prefix 1 --family dinov2 --seed 0]

The same arguments always give byte-identical files.  Needs `onnx` and `numpy`;
checks itself with onnxruntime when that is importable.
"""

import argparse
import os
import sys

from _modelkit import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, build_manifest,
                       manifest_text, require, sha256_file)

FAMILY_NORMALISATION = {
    # Each family's usual statistics, so that tests see realistic manifests.
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
}
OPSET = 14
IR_VERSION = 8  # the IR that goes with opset 14; any onnxruntime of the last years loads it


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Write a tiny deterministic ViT-like test model "
                                "(model.onnx + manifest.json) that follows the LogSAD model contract.")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--size", type=int, default=28, help="input width and height (default 28)")
    p.add_argument("--width", type=int, help="input width, overrides --size")
    p.add_argument("--height", type=int, help="input height, overrides --size")
    p.add_argument("--patch", type=int, default=14, help="patch size (default 14)")
    p.add_argument("--dim", type=int, default=8, help="feature dimension (default 8)")
    p.add_argument("--stages", type=int, default=4, help="number of stage outputs (default 4)")
    p.add_argument("--prefix", type=int, default=1,
                   help="class/register tokens before the patch tokens (default 1; 0 allowed)")
    p.add_argument("--family", default="dinov2", choices=sorted(FAMILY_NORMALISATION),
                   help="manifest family, also picks the mean/std (default dinov2)")
    p.add_argument("--channels", default="RGB", choices=["RGB", "BGR"],
                   help="channel order written in the manifest (default RGB)")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    p.add_argument("--name", help="manifest name (default derived from the arguments)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the onnxruntime self-check even if onnxruntime is importable")
    args = p.parse_args(argv)
    args.width = args.width or args.size
    args.height = args.height or args.size
    for what in ("width", "height", "patch", "dim", "stages"):
        if getattr(args, what) < 1:
            p.error("--%s must be at least 1" % what)
    if args.prefix < 0:
        p.error("--prefix must not be negative")
    if args.width % args.patch or args.height % args.patch:
        p.error("the patch size %d must divide the input %dx%d" % (args.patch, args.width, args.height))
    if not args.name:
        args.name = "tiny-%s-%dx%d-p%d-d%d-s%d" % (args.family, args.width, args.height,
                                                   args.patch, args.dim, args.seed)
    return args


def build_model(args):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    P, D = args.patch, args.dim
    gh, gw = args.height // P, args.width // P
    n = gh * gw
    # RandomState, not default_rng: its streams are frozen across numpy releases, which keeps
    # the file (and so its sha256, which profiles record) identical everywhere.
    rng = np.random.RandomState(args.seed)

    def randn(shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = []

    def param(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    # The patch kernel is the product of per-filter channel, row and column factors, multiplied
    # out inside the graph (onnxruntime folds it at load).  A full [D, 3, P, P] kernel would be
    # 19 KB at the defaults; the factors are 1 KB and still give D distinct local filters.
    param("embed.channel", randn((D, 3, 1, 1), 1.0 / np.sqrt(3.0)))
    param("embed.row", randn((D, 1, P, 1), 1.0 / np.sqrt(P)))
    param("embed.col", randn((D, 1, 1, P), 1.0 / np.sqrt(P)))
    param("embed.bias", randn((D,), 0.1))
    param("pos", randn((1, n, D), 0.1))
    inits.append(numpy_helper.from_array(np.array([0, D, -1], dtype=np.int64), "flatten.shape"))

    nodes = [
        helper.make_node("Mul", ["embed.channel", "embed.row"], ["embed.cr"]),
        helper.make_node("Mul", ["embed.cr", "embed.col"], ["embed.kernel"]),
        helper.make_node("Conv", ["pixel_values", "embed.kernel", "embed.bias"], ["patches.map"],
                         kernel_shape=[P, P], strides=[P, P]),
        # [B, D, gh, gw] -> [B, D, gh*gw] (0 keeps the dynamic batch) -> [B, gh*gw, D]: patch
        # tokens row-major, as the contract asks.
        helper.make_node("Reshape", ["patches.map", "flatten.shape"], ["patches.flat"]),
        helper.make_node("Transpose", ["patches.flat"], ["patches.tokens"], perm=[0, 2, 1]),
        helper.make_node("Add", ["patches.tokens", "pos"], ["patches"]),
    ]
    x = "patches"
    if args.prefix:
        # Built from the image rather than Expand-ed from a constant, so no Shape arithmetic is
        # needed for the dynamic batch.
        param("prefix", randn((1, args.prefix, D), 1.0))
        nodes += [
            helper.make_node("ReduceMean", ["patches"], ["prefix.mean"], axes=[1], keepdims=1),
            helper.make_node("Add", ["prefix.mean", "prefix"], ["prefix.tokens"]),
            helper.make_node("Concat", ["prefix.tokens", "patches"], ["tokens"], axis=1),
        ]
        x = "tokens"

    outputs = []
    for k in range(1, args.stages + 1):
        s = "stage%d" % k
        param(s + ".w", randn((D, D), 1.0 / np.sqrt(D)))
        param(s + ".b", randn((D,), 0.1))
        nodes += [
            helper.make_node("MatMul", [x, s + ".w"], [s + ".mm"]),
            helper.make_node("Add", [s + ".mm", s + ".b"], [s + ".pre"]),
            helper.make_node("Tanh", [s + ".pre"], [s + ".act"]),
            helper.make_node("Add", [x, s + ".act"], [s]),
        ]
        outputs.append(helper.make_tensor_value_info(s, TensorProto.FLOAT,
                                                     ["batch", args.prefix + n, D]))
        x = s

    graph = helper.make_graph(
        nodes, args.name,
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                       ["batch", 3, args.height, args.width])],
        outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="gst-logsad/make_test_model.py")
    model.ir_version = IR_VERSION
    model.doc_string = "Tiny synthetic ViT-like test model; not a real backbone."
    return model


def manifest(args):
    mean, std = FAMILY_NORMALISATION[args.family]
    return build_manifest(
        name=args.name, family=args.family, width=args.width, height=args.height,
        patch=args.patch, prefix_tokens=args.prefix, feature_dim=args.dim,
        stage_outputs=["stage%d" % k for k in range(1, args.stages + 1)],
        mean=mean, std=std, channels=args.channels,
        description="Tiny synthetic test model from models/make_test_model.py (seed %d): "
                    "per-patch features only, no real vision content." % args.seed)


def verify(path, args):
    """Runs the written file: dynamic batch, shapes, stage differences and patch locality."""
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not importable: skipping the self-check")
        return
    import numpy as np

    P, gh, gw = args.patch, args.height // args.patch, args.width // args.patch
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    names = ["stage%d" % k for k in range(1, args.stages + 1)]
    rng = np.random.RandomState(1234)
    images = rng.uniform(0.0, 1.0, (3, 3, args.height, args.width)).astype(np.float32)
    outs = sess.run(names, {"pixel_values": images})
    shape = (3, args.prefix + gh * gw, args.dim)
    for name, out in zip(names, outs):
        if out.shape != shape or not np.isfinite(out).all():
            raise SystemExit("%s: shape %s (expected %s) or non-finite values" % (name, out.shape, shape))
    print("  %d outputs of shape %s for a batch of 3" % (len(outs), list(shape)))
    for a, b, out_a, out_b in zip(names, names[1:], outs, outs[1:]):
        if np.allclose(out_a, out_b):
            raise SystemExit("%s and %s are the same" % (a, b))
    one = sess.run(names, {"pixel_values": images[1:2]})
    if any(not np.allclose(o1[0], o3[1], atol=1e-5) for o1, o3 in zip(one, outs)):
        raise SystemExit("an image's features depend on the rest of the batch")

    # A bright square inside the last patch must change that patch's tokens, and only those.
    defect = images[:1].copy()
    y0, x0 = (gh - 1) * P, (gw - 1) * P
    defect[:, :, y0 + P // 4: y0 + P // 4 + max(1, P // 2), x0 + P // 4: x0 + P // 4 + max(1, P // 2)] = 1.0
    base, hit = outs[-1][0], sess.run([names[-1]], {"pixel_values": defect})[0][0]
    change = np.abs(hit - base).max(axis=1)[args.prefix:].reshape(gh, gw)
    if change[-1, -1] < 1e-3 or (gh * gw > 1 and np.delete(change.ravel(), -1).max() > 1e-5):
        raise SystemExit("a defect in the last patch did not stay local:\n%s" % change)
    print("  a defect in patch (%d, %d) changes its %s token by %.3g, other patches by %.3g"
          % (gh - 1, gw - 1, names[-1], change[-1, -1],
             np.delete(change.ravel(), -1).max() if gh * gw > 1 else 0.0))


def main(argv=None):
    args = parse_args(argv)
    require("numpy", "onnx")
    import onnx
    model = build_model(args)
    onnx.checker.check_model(model, full_check=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "model.onnx")
    onnx.save(model, path)
    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as f:
        f.write(manifest_text(manifest(args)))
    print("wrote %s (%d bytes, sha256 %s) and manifest.json, name %s"
          % (path, os.path.getsize(path), sha256_file(path), args.name))
    if not args.no_verify:
        verify(path, args)


if __name__ == "__main__":
    sys.exit(main())
