"""Helpers shared by the scripts in models/: manifests, hashes, atomic writes, exports.

Only the standard library is imported at module level, so every script's --help works on
a machine without numpy, onnx or torch.
"""

import hashlib
import inspect
import json
import os
import re
import tempfile

MANIFEST_FORMAT = "logsad-model/1"

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# OpenAI CLIP's normalisation; the LogSAD authors feed it to both of their backbones.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def require(*modules):
    """Imports the given modules or exits with one line naming what is missing."""
    import importlib
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise SystemExit("this script needs the Python package(s) %s, which are not importable "
                         "here; see models/README.md" % ", ".join(missing))


def build_manifest(*, name, family, width, height, patch, prefix_tokens, feature_dim,
                   stage_outputs, mean, std, description, channels="RGB",
                   input_name="pixel_values", onnx_file="model.onnx"):
    """The manifest dict, in the field order of src/engine/manifest.rs."""
    if width % patch or height % patch:
        raise ValueError("patch size %d does not divide %dx%d" % (patch, width, height))
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "family": family,
        "onnx": onnx_file,
        "input": {
            "name": input_name,
            "width": width,
            "height": height,
            "layout": "NCHW",
            "channels": channels,
            "mean": list(mean),
            "std": list(std),
        },
        "stage_outputs": list(stage_outputs),
        "tokens": {
            "prefix_tokens": prefix_tokens,
            "grid_height": height // patch,
            "grid_width": width // patch,
            "patch_size": patch,
        },
        "feature_dim": feature_dim,
        "description": description,
    }


def manifest_text(manifest):
    text = json.dumps(manifest, indent=2)
    # One line per short list ("mean": [0.485, 0.456, 0.406]) keeps committed manifests readable.
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]",
                  lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    return text + "\n"


def write_if_changed(path, text):
    """Writes text unless the file already holds it; leaving it alone keeps its mtime."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class AtomicPath:
    """A temporary path beside `final`, renamed onto it only if the block succeeds.

    An interrupted build then never leaves a truncated model.onnx behind, which an mtime-based
    "already built" check would otherwise take as good.
    """

    def __init__(self, final):
        self.final = final
        self.tmp = None

    def __enter__(self):
        d = os.path.dirname(os.path.abspath(self.final))
        fd, self.tmp = tempfile.mkstemp(prefix=".tmp.", suffix=".onnx", dir=d)
        os.close(fd)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                # mkstemp makes the file 0600; give it what a plain open() would have.
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self.tmp, 0o666 & ~umask)
                os.replace(self.tmp, self.final)
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)
        return False


def torch_export(module, example, path, output_names, opset, input_name="pixel_values",
                 dynamic_batch=True):
    """torch.onnx.export with the options every export script here wants.

    The TorchScript-based exporter is requested explicitly (`dynamo=False`) where the
    installed torch has the switch: newer releases default to the dynamo exporter, whose
    output for the same module differs in node naming and shape handling.
    """
    import torch

    # nn.MultiheadAttention's fused inference path (taken under no_grad) has no ONNX
    # translation; turning it off makes the module run, and trace, as plain ops.
    set_fastpath = getattr(getattr(torch.backends, "mha", None), "set_fastpath_enabled", None)
    if set_fastpath is not None:
        set_fastpath(False)
    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {input_name: {0: "batch"}}
        dynamic_axes.update({name: {0: "batch"} for name in output_names})
    with torch.no_grad():
        torch.onnx.export(
            module, (example,), path,
            input_names=[input_name], output_names=list(output_names),
            dynamic_axes=dynamic_axes, opset_version=opset,
            do_constant_folding=True, **kwargs)


def check_onnx(path):
    import onnx
    # Path form: the checker then also copes with models near or over the 2 GB protobuf limit.
    onnx.checker.check_model(path)


def ort_compare(path, feeds, expected, atol, rtol=1e-3):
    """Runs `path` in onnxruntime on CPU and compares named outputs; False if unavailable."""
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not importable: skipping the numeric check")
        return False
    import numpy as np

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    names = list(expected)
    got = dict(zip(names, sess.run(names, feeds)))
    for name in names:
        want = expected[name]
        if got[name].shape != want.shape:
            raise SystemExit("%s: onnxruntime shape %s, torch shape %s"
                             % (name, got[name].shape, want.shape))
        diff = float(np.abs(got[name] - want).max())
        scale = float(np.abs(want).max())
        print("  %s %s: max |onnxruntime - torch| = %.3g (max |value| %.3g)"
              % (name, list(got[name].shape), diff, scale))
        if diff > atol + rtol * scale:
            raise SystemExit("%s differs between onnxruntime and torch" % name)
    return True
