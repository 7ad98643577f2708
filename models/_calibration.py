"""Images -> model input tensors, as the plugin prepares them (src/detect/preprocess.rs).

Each image is decoded to RGB, resized to the model input with the plugin's default `f32`
resampling (antialiased bilinear: a triangle filter of half-width max(scale, 1) source pixels,
half-pixel centres, weights normalised to 1 so borders renormalise; the whole frame squashed
to the input, aspect ratio not kept), scaled to [0, 1] and normalised with the manifest's mean
and std, in NCHW float32. JPEGs are decoded by Pillow here and by the Rust `image` crate in the
plugin; the two may differ by a grey level on a few pixels.

Needs numpy and Pillow; imported by the scripts only after their arguments are parsed.
"""

import os

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def axis_filter(size, out):
    """[out, size] weights resampling an axis of `size` pixels to `out` (see the module doc)."""
    import numpy as np
    scale = size / out
    support = max(scale, 1.0)
    centres = (np.arange(out, dtype=np.float64) + 0.5) * scale
    sources = np.arange(size, dtype=np.float64) + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(sources[None, :] - centres[:, None]) / support)
    return w / w.sum(axis=1, keepdims=True)


def list_images(folder, count, skip=0):
    """The image files of `folder` sorted by name, `count` of them after the first `skip`."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    chosen = names[skip:skip + count]
    if len(chosen) < count:
        raise SystemExit("%s holds %d images; %d are needed after skipping %d"
                         % (folder, len(names), count, skip))
    return [os.path.join(folder, n) for n in chosen]


def load_tensor(path, manifest):
    """One image as a [1, 3, height, width] float32 tensor for the model `manifest` describes."""
    import numpy as np
    from PIL import Image
    spec = manifest["input"]
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
    rows = axis_filter(rgb.shape[0], spec["height"])
    cols = axis_filter(rgb.shape[1], spec["width"])
    # Rows then columns, channel by channel: [out_h, h] @ [h, w] @ [w, out_w].
    resized = np.stack([rows @ rgb[:, :, c] @ cols.T for c in range(3)]) / 255.0
    if spec["channels"] == "BGR":
        resized = resized[::-1]
    mean = np.asarray(spec["mean"], np.float64)[:, None, None]
    std = np.asarray(spec["std"], np.float64)[:, None, None]
    return ((resized - mean) / std).astype(np.float32)[None]
