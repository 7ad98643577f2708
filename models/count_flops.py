#!/usr/bin/env python3
"""FLOPs of one image through a logsad backbone, counted on its ONNX graph.

Usage: count_flops.py MANIFEST.json  ->  one JSON line on stdout:
  {"model": NAME, "input": [H, W], "flops": N, "by_op": {"MatMul": N, ...}, "nodes": N}
       count_flops.py --ort-matmul N [--threads T]  ->  {"n": N, "gflops": G}
  the second form measures ONNX Runtime's own MatMul of two N x N float matrices (CPU, T
  intra-op threads, 0 = its choice; best of 5 runs after one warm-up), for the benchmarks'
  GEMM peak.

The graph's input is fixed to batch 1 at the manifest's input size (so a graph with an open input
size is counted at the size the manifest runs it at), shapes are inferred with ONNX's shape
inference (with data propagation, so that reshapes computed from shapes resolve), and every
matrix product is counted at 2 FLOPs per multiply-add:
  MatMul, MatMulInteger, QLinearMatMul: 2 * prod(batch dims) * M * K * N
  Gemm: 2 * M * K * N
  Conv, ConvInteger, QLinearConv: 2 * prod(output) * (C_in / group) * prod(kernel)
Integer products (a quantised model) count as operations like float ones. Other operators
(norms, softmax, activations, additions) are not counted: about 1% of a ViT's arithmetic.
A product whose shapes stay unknown after inference is an error naming the node.
Needs the `onnx`, `onnxruntime` and `numpy` packages (the set-up's .deps/venv).
"""
import json
import pathlib
import sys
import tempfile

import onnx
from onnx import shape_inference


def dims_of(value_info):
    shape = value_info.type.tensor_type.shape
    out = []
    for d in shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        else:
            return None
    return out


def prod(values):
    n = 1
    for v in values:
        n *= v
    return n


COUNTED = (
    "MatMul",
    "MatMulInteger",
    "QLinearMatMul",
    "Gemm",
    "Conv",
    "ConvInteger",
    "QLinearConv",
)


def operands(node):
    """The tensors whose shapes the count of `node` reads."""
    if node.op_type == "QLinearConv":
        return [node.input[3], node.output[0]]
    if node.op_type in ("Conv", "ConvInteger"):
        return [node.input[1], node.output[0]]
    return [node.input[0], node.output[0]]


def run_for_shapes(model, folder, input_name, size, names):
    """Shapes of `names`, from one ONNX Runtime run on a zero image of batch 1 (`folder`: the
    model file's folder)."""
    import numpy as np
    import onnxruntime as ort

    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # Written beside the model, so that its external data (if any) resolves as for the model.
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".onnx") as copy:
        copy.write(model.SerializeToString())
        copy.flush()
        session = ort.InferenceSession(copy.name, options, providers=["CPUExecutionProvider"])
    image = np.zeros([1, 3] + size, dtype=np.float32)
    values = session.run(names, {input_name: image})
    return {name: list(value.shape) for name, value in zip(names, values)}


def count(manifest_path):
    manifest_path = pathlib.Path(manifest_path)
    manifest = json.loads(manifest_path.read_text())
    onnx_path = manifest_path.parent / manifest["onnx"]
    # Shapes only: the weights are not needed (and a variant that reads them through a hard
    # link, as the 448 model, is refused by onnx's external-data loader).
    model = onnx.load(str(onnx_path), load_external_data=False)
    size = [manifest["input"]["height"], manifest["input"]["width"]]
    graph_inputs = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in graph_inputs:
            continue
        if value.name != manifest["input"]["name"]:
            continue
        dims = value.type.tensor_type.shape.dim
        for dim, fixed in zip(dims, [1, 3] + size):
            dim.ClearField("dim_param")
            dim.dim_value = fixed
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[value.name] = dims_of(value)
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    missing = sorted(
        {
            name
            for node in model.graph.node
            if node.op_type in COUNTED
            for name in operands(node)
            if shapes.get(name) is None
        }
    )
    if missing:
        shapes.update(run_for_shapes(model, onnx_path.parent, manifest["input"]["name"], size, missing))

    def shape(name, node):
        found = shapes.get(name)
        if found is None:
            raise SystemExit(
                f"count_flops: the shape of {name!r} (input or output of node {node.name!r}, "
                f"{node.op_type}) is unknown after shape inference"
            )
        return found

    by_op = {}
    nodes = 0
    for node in model.graph.node:
        op = node.op_type
        if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
            a = shape(node.input[0], node)
            out = shape(node.output[0], node)
            flops = 2 * prod(out) * a[-1]
        elif op == "Gemm":
            a = shape(node.input[0], node)
            trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
            k = a[0] if trans_a else a[1]
            out = shape(node.output[0], node)
            flops = 2 * prod(out) * k
        elif op in ("Conv", "ConvInteger", "QLinearConv"):
            weight_index = 3 if op == "QLinearConv" else 1
            w = shape(node.input[weight_index], node)
            out = shape(node.output[0], node)
            # weight: [C_out, C_in / group, k...]: each output value is C_in/group * prod(k) MACs.
            flops = 2 * prod(out) * prod(w[1:])
        else:
            continue
        nodes += 1
        by_op[op] = by_op.get(op, 0) + flops
    return {
        "model": manifest["name"],
        "input": size,
        "flops": sum(by_op.values()),
        "by_op": by_op,
        "nodes": nodes,
    }


def ort_matmul(n, threads):
    """GFLOP/s of ONNX Runtime's MatMul of two n x n matrices, best of 5."""
    import time

    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    feeds = {
        "a": rng.standard_normal((n, n), dtype=np.float32),
        "b": rng.standard_normal((n, n), dtype=np.float32),
    }
    session.run(None, feeds)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - start)
    return {"n": n, "gflops": 2.0 * n**3 / best / 1e9}


def main():
    args = sys.argv[1:]
    if args[:1] == ["--ort-matmul"] and len(args) in (2, 4):
        threads = int(args[3]) if len(args) == 4 and args[2] == "--threads" else 0
        print(json.dumps(ort_matmul(int(args[1]), threads)))
        return
    if len(args) != 1:
        raise SystemExit(
            "usage: count_flops.py MANIFEST.json | count_flops.py --ort-matmul N [--threads T]"
        )
    print(json.dumps(count(args[0])))


if __name__ == "__main__":
    main()
