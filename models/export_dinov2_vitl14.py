#!/usr/bin/env python3
"""Export DINOv2 ViT-L/14 at 448x448 as a LogSAD backbone (the paper's DINOv2 setting).

    python3 models/export_dinov2_vitl14.py --out models/dinov2-vitl14-448 \
        [--hub-repo facebookresearch/dinov2 | --hub-repo /path/to/dinov2-clone] \
        [--weights /path/to/dinov2_vitl14_pretrain.pth]

Stages are the outputs of blocks 6, 12, 18 and 24 (1-based) of the 24-block encoder, each
passed through the encoder's final LayerNorm, as the LogSAD authors take them.  A 448x448
input gives a 32x32 patch grid; the position embeddings (trained for 37x37) are resized once
here, with DINOv2's own interpolation, and stored in the graph as a constant.  The input is
normalised with CLIP's mean/std, as in the authors' code.

Needs torch (and onnx; onnxruntime to check the result).  They are imported only after the
arguments are parsed, so --help works anywhere.  Not run in this repository's CI: see
models/README.md.
"""

import argparse
import os
import sys
import time

from _modelkit import (AtomicPath, CLIP_MEAN, CLIP_STD, build_manifest, check_onnx,
                       manifest_text, ort_compare, require, sha256_file, torch_export,
                       write_if_changed)

PATCH = 14


def parse_args():
    p = argparse.ArgumentParser(
        description="Export DINOv2 ViT-L/14 (torch hub) to ONNX with stage outputs "
        "stage1..stage4 and write its LogSAD manifest. Requires torch.")
    p.add_argument("--out", required=True, help="output folder (model.onnx + manifest.json)")
    p.add_argument("--hub-repo", default="facebookresearch/dinov2",
                   help="torch hub repository, or a local clone of it for offline use "
                        "(default facebookresearch/dinov2)")
    p.add_argument("--hub-model", default="dinov2_vitl14",
                   help="hub entry point (default dinov2_vitl14; dinov2_vitl14_reg also works)")
    p.add_argument("--weights",
                   help="local backbone checkpoint (e.g. dinov2_vitl14_pretrain.pth); "
                        "without it the hub downloads the pretrained weights")
    p.add_argument("--size", type=int, default=448,
                   help="input width and height, a multiple of 14 (default 448 -> 32x32 grid)")
    p.add_argument("--stage-blocks", default="6,12,18,24",
                   help="1-based blocks whose outputs become stage1..N (default 6,12,18,24)")
    p.add_argument("--name", help="manifest name (default dinov2-vitl14-<size>)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--force", action="store_true", help="overwrite an existing model.onnx")
    p.add_argument("--no-verify", action="store_true",
                   help="skip comparing onnxruntime with torch on a random batch")
    args = p.parse_args()
    if args.size % PATCH:
        p.error("--size must be a multiple of %d" % PATCH)
    try:
        args.stage_blocks = [int(b) for b in args.stage_blocks.split(",")]
    except ValueError:
        p.error("--stage-blocks must be comma-separated integers")
    if sorted(set(args.stage_blocks)) != args.stage_blocks or args.stage_blocks[0] < 1:
        p.error("--stage-blocks must be increasing and 1-based")
    args.name = args.name or "dinov2-vitl14-%d" % args.size
    return args


def load_backbone(args):
    import torch

    # DINOv2 picks xFormers' memory-efficient attention when it can import it; that kernel
    # does not export, the plain attention it falls back to does.
    os.environ.setdefault("XFORMERS_DISABLED", "1")
    local = os.path.isdir(args.hub_repo)
    vit = torch.hub.load(args.hub_repo, args.hub_model, source="local" if local else "github",
                         pretrained=args.weights is None)
    if args.weights:
        state = torch.load(args.weights, map_location="cpu")
        vit.load_state_dict(state, strict=True)
    return vit.float().eval()


def build_module(vit, size, stage_blocks):
    import torch
    from torch import nn

    blocks = []
    for b in vit.blocks:
        # With block_chunks > 0 the hub model nests blocks in chunks padded with nn.Identity.
        if isinstance(b, nn.ModuleList):
            blocks.extend(m for m in b if not isinstance(m, nn.Identity))
        else:
            blocks.append(b)
    if stage_blocks[-1] > len(blocks):
        raise SystemExit("the model has %d blocks, --stage-blocks asks for %d"
                         % (len(blocks), stage_blocks[-1]))

    class DinoStages(nn.Module):
        """DINOv2's token preparation at a fixed size, then the blocks, tapping the stages."""

        def __init__(self):
            super().__init__()
            self.patch_embed = vit.patch_embed
            self.cls_token = vit.cls_token
            self.register_tokens = getattr(vit, "register_tokens", None)
            self.blocks = nn.ModuleList(blocks[: stage_blocks[-1]])
            self.norm = vit.norm
            self.taps = [b - 1 for b in stage_blocks]
            with torch.no_grad():
                # The model's own resize of its 37x37 table to the target grid, done once in
                # eager mode so the graph holds a constant instead of a traced Resize.
                grid = (size // PATCH) ** 2
                probe = torch.zeros(1, 1 + grid, vit.cls_token.shape[-1])
                pos = vit.interpolate_pos_encoding(probe, size, size)
            self.register_buffer("pos_embed", pos.detach().clone().float())

        def forward(self, x):
            x = self.patch_embed(x)  # [B, grid, D]
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
            if self.register_tokens is not None:
                # Registers sit between the class token and the patches and get no position.
                x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1),
                               x[:, 1:]], dim=1)
            outs = []
            for i, blk in enumerate(self.blocks):
                x = blk(x)
                if i in self.taps:
                    outs.append(self.norm(x))
            return tuple(outs)

    module = DinoStages().eval()
    prefix = 1 + (0 if module.register_tokens is None else module.register_tokens.shape[1])
    return module, prefix, vit.cls_token.shape[-1]


def main():
    args = parse_args()
    out_dir = os.path.abspath(args.out)
    out_path = os.path.join(out_dir, "model.onnx")
    if os.path.exists(out_path) and not args.force:
        raise SystemExit("%s exists; use --force to overwrite" % out_path)
    require("numpy", "onnx", "torch")
    os.makedirs(out_dir, exist_ok=True)
    start = time.time()

    import numpy as np
    import torch

    vit = load_backbone(args)
    module, prefix, dim = build_module(vit, args.size, args.stage_blocks)
    names = ["stage%d" % (i + 1) for i in range(len(args.stage_blocks))]
    rng = np.random.RandomState(0)
    # Pixels drawn in [0, 1] then normalised, so the check sees realistic activations.
    pixels = rng.uniform(0, 1, (2, 3, args.size, args.size)).astype(np.float32)
    x = (pixels - np.array(CLIP_MEAN, np.float32)[:, None, None]) / \
        np.array(CLIP_STD, np.float32)[:, None, None]
    x = torch.from_numpy(x.astype(np.float32))

    with torch.no_grad():
        ours = [t.numpy() for t in module(x)]
        # The same stages through DINOv2's own API: guards the re-implemented token preparation.
        ref = vit.get_intermediate_layers(x, n=[b - 1 for b in args.stage_blocks],
                                          norm=True, return_class_token=True)
    for name, mine, (patches, cls) in zip(names, ours, ref):
        d = max(float(np.abs(mine[:, prefix:] - patches.numpy()).max()),
                float(np.abs(mine[:, 0] - cls.numpy()).max()))
        print("  %s vs get_intermediate_layers: max |diff| = %.3g" % (name, d))
        if d > 1e-4:
            raise SystemExit("%s does not match DINOv2's get_intermediate_layers" % name)

    with AtomicPath(out_path) as tmp:
        torch_export(module, x[:1], tmp, names, args.opset)
        check_onnx(tmp)
        if not args.no_verify:
            ort_compare(tmp, {"pixel_values": x.numpy()}, dict(zip(names, ours)), atol=1e-3)

    manifest = build_manifest(
        name=args.name, family="dinov2", width=args.size, height=args.size, patch=PATCH,
        prefix_tokens=prefix, feature_dim=dim, stage_outputs=names,
        mean=CLIP_MEAN, std=CLIP_STD,
        description="DINOv2 %s (torch hub %s) at %dx%d; stages are blocks %s (1-based), each "
                    "through the final LayerNorm. CLIP mean/std as in the LogSAD authors' code. "
                    "Exported by models/export_dinov2_vitl14.py."
                    % (args.hub_model, args.hub_repo if not os.path.isdir(args.hub_repo)
                       else "local clone", args.size, args.size,
                       "/".join(map(str, args.stage_blocks))))
    write_if_changed(os.path.join(out_dir, "manifest.json"), manifest_text(manifest))
    print("%s  %s (%d bytes)" % (sha256_file(out_path), out_path, os.path.getsize(out_path)))
    print("done in %.1f s" % (time.time() - start))


if __name__ == "__main__":
    sys.exit(main())
