#!/usr/bin/env python3
"""Faithful LogSAD patch scores, computed independently of the Rust code: NumPy + onnxruntime.

A port of the reference's patch detector (paper Eq. 1, as the authors' code computes it; see
README.md, "Method, faithful by default"), written from the formulas, in float32 as torch:

  1. image -> RGB float32 in [0, 1] (x / 255);
  2. resize to the model input with torch's F.interpolate(mode="bilinear", antialias=True,
     align_corners=False): separable, width first, then height (an axis of equal size is left
     alone), each output pixel a normalised triangle filter around its half-pixel centre;
  3. (x - mean) / std with the manifest's statistics;
  4. the model's stage outputs, prefix tokens dropped, as token grids;
  5. each grid upsampled x2 (bilinear, align_corners=True) and L2-normalised per cell;
  6. per stage, 1 - the highest cosine similarity of each cell to the bank (every upsampled
     cell of every reference image); the map is the mean over stages, the score its maximum.

Usage:
  reference_scores.py --manifest M --references R1.png R2.png ... -- IMAGE...
prints one JSON line per image: {"path": ..., "score": ...}. Images are PNG (8-bit, grey, grey
+ alpha, RGB or RGBA, not interlaced), read with zlib alone so that no image library's
decoder stands between the pixels and the scores.
"""

import argparse
import json
import os
import struct
import sys
import zlib

import numpy as np
import onnxruntime as ort

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Samples per pixel by PNG colour type (palette images are not supported).
PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def read_png(path):
    """An 8-bit PNG as an (height, width, 3) uint8 RGB array (alpha dropped, grey repeated)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != PNG_SIGNATURE:
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError(f"{path}: no IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in PNG_CHANNELS or interlace != 0:
        raise ValueError(
            f"{path}: only 8-bit grey/RGB(A) non-interlaced PNG is supported "
            f"(depth {depth}, colour type {colour}, interlace {interlace})"
        )
    bpp = PNG_CHANNELS[colour]
    stride = width * bpp
    raw = zlib.decompress(b"".join(idat))
    if len(raw) != height * (stride + 1):
        raise ValueError(f"{path}: {len(raw)} bytes of image data, expected {height * (stride + 1)}")
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    previous = np.zeros(stride, np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:  # None
            current = line
        elif kind == 1:  # Sub: running sums of every bpp-th byte
            current = np.empty_like(line)
            for c in range(bpp):
                current[c::bpp] = np.cumsum(line[c::bpp]) % 256
        elif kind == 2:  # Up
            current = (line + previous) % 256
        elif kind in (3, 4):  # Average, Paeth: each byte depends on its left neighbour
            current = np.empty_like(line)
            up = previous.tolist()
            values = line.tolist()
            done = [0] * stride
            for i in range(stride):
                left = done[i - bpp] if i >= bpp else 0
                if kind == 3:
                    done[i] = (values[i] + (left + up[i]) // 2) % 256
                else:
                    upper_left = up[i - bpp] if i >= bpp else 0
                    done[i] = (values[i] + paeth(left, up[i], upper_left)) % 256
            current[:] = done
        else:
            raise ValueError(f"{path}: unknown PNG filter {kind} in row {y}")
        out[y] = current
        previous = current
    pixels = out.reshape(height, width, bpp)
    if bpp in (1, 2):
        return np.repeat(pixels[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3])


def aa_bilinear_weights(size_in, size_out):
    """torch's antialiased bilinear filter along one axis (align_corners=False), float32.

    Returns (first, weights): per output index its first source index, and its weights padded
    with zeros to the widest window.
    """
    # As torch computes them for a float32 tensor: scale, support, centre and weights are float32;
    # the "+ 0.5" terms and the division by the scale are promoted to double, then rounded.
    scale = np.float32(size_in / size_out)
    support = scale if scale >= 1.0 else np.float32(1.0)
    inverse = np.float32(1.0 / float(scale)) if scale >= 1.0 else np.float32(1.0)
    firsts, windows = [], []
    for i in range(size_out):
        centre = np.float32(float(scale) * (i + 0.5))
        first = max(int(float(centre - support) + 0.5), 0)
        end = min(int(float(centre + support) + 0.5), size_in)
        offsets = np.arange(first, end, dtype=np.float32) - centre  # float32
        x = np.abs(((offsets.astype(np.float64) + 0.5) * float(inverse)).astype(np.float32))
        w = np.where(x < 1, np.float32(1) - x, np.float32(0)).astype(np.float32)
        total = w.sum(dtype=np.float32)
        if total != 0.0:
            w = w / total
        firsts.append(first)
        windows.append(w)
    width = max(len(w) for w in windows)
    weights = np.zeros((size_out, width), np.float32)
    for i, w in enumerate(windows):
        weights[i, : len(w)] = w
    return np.array(firsts), weights


def resample_axis(x, axis, size_out):
    """Resamples float32 array `x` along `axis` to `size_out`, taps accumulated in order."""
    size_in = x.shape[axis]
    if size_in == size_out:
        return x
    first, weights = aa_bilinear_weights(size_in, size_out)
    moved = np.moveaxis(x, axis, -1)
    acc = np.zeros(moved.shape[:-1] + (size_out,), np.float32)
    for k in range(weights.shape[1]):
        index = np.minimum(first + k, size_in - 1)  # padded taps weigh 0
        acc += moved[..., index] * weights[:, k]
    return np.moveaxis(acc, -1, axis)


def preprocess(rgb, spec):
    """(H, W, 3) uint8 -> (1, 3, height, width) float32 normalised model input."""
    x = np.transpose(rgb.astype(np.float32) / np.float32(255.0), (2, 0, 1))  # CHW
    x = resample_axis(x, 2, spec["width"])  # width first, as torch's separable kernel
    x = resample_axis(x, 1, spec["height"])
    mean = np.array(spec["mean"], np.float32).reshape(3, 1, 1)
    std = np.array(spec["std"], np.float32).reshape(3, 1, 1)
    return ((x - mean) / std)[None].astype(np.float32)


def upsample_align_corners(grid, factor):
    """(h, w, d) -> (factor*h, factor*w, d): torch's bilinear upsampling, align_corners=True."""

    def axis(size_in):
        size_out = size_in * factor
        scale = np.float32((size_in - 1) / (size_out - 1)) if size_out > 1 else np.float32(0)
        real = scale * np.arange(size_out, dtype=np.float32)
        low = np.floor(real).astype(np.int64)
        high = np.where(low < size_in - 1, low + 1, low)
        frac = np.clip(real - low.astype(np.float32), 0, 1).astype(np.float32)
        return low, high, frac

    y0, y1, fy = axis(grid.shape[0])
    x0, x1, fx = axis(grid.shape[1])
    fx, fy = fx[None, :, None], fy[:, None, None]
    gx, gy = np.float32(1) - fx, np.float32(1) - fy
    top = gx * grid[y0][:, x0] + fx * grid[y0][:, x1]
    bottom = gx * grid[y1][:, x0] + fx * grid[y1][:, x1]
    return (gy * top + fy * bottom).astype(np.float32)


class Reference:
    """The model with its manifest, turning images into per-stage normalised cell features."""

    def __init__(self, manifest_path, threads):
        with open(manifest_path) as f:
            self.manifest = json.load(f)
        if self.manifest.get("format") != "logsad-model/1":
            raise ValueError(f"{manifest_path}: not a logsad-model/1 manifest")
        model = os.path.join(os.path.dirname(os.path.abspath(manifest_path)), self.manifest["onnx"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def features(self, path):
        """Per stage, the (cells, dim) L2-normalised features of the x2-upsampled token grid."""
        spec, tokens = self.manifest["input"], self.manifest["tokens"]
        tensor = preprocess(read_png(path), spec)
        outputs = self.session.run(self.manifest["stage_outputs"], {spec["name"]: tensor})
        gh, gw, prefix = tokens["grid_height"], tokens["grid_width"], tokens["prefix_tokens"]
        stages = []
        for out in outputs:
            out = np.asarray(out, np.float32)[0]
            grid = out[prefix : prefix + gh * gw].reshape(gh, gw, -1)
            cells = upsample_align_corners(grid, 2).reshape(-1, grid.shape[-1])
            norm = np.sqrt(np.sum(cells * cells, axis=1, dtype=np.float32))
            stages.append(cells / np.maximum(norm, np.float32(1e-12))[:, None])
        return stages


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="the model's manifest.json")
    parser.add_argument("--references", nargs="+", required=True, help="reference PNG images")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("images", nargs="+", help="PNG images to score")
    args = parser.parse_args(argv)

    reference = Reference(args.manifest, args.threads)
    per_image = [reference.features(p) for p in args.references]
    banks = [np.concatenate(stage) for stage in zip(*per_image)]
    for path in args.images:
        stages = reference.features(path)
        distances = [
            np.float32(1) - np.max(query @ bank.T, axis=1) for query, bank in zip(stages, banks)
        ]
        cell_map = np.mean(np.stack(distances), axis=0, dtype=np.float32)
        print(json.dumps({"path": path, "score": float(cell_map.max())}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
