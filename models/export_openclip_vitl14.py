#!/usr/bin/env python3
"""Export OpenCLIP ViT-L/14 (DataComp-1B) at 448x448 as a LogSAD backbone (the paper's CLIP).

    python3 models/export_openclip_vitl14.py --out models/openclip-vitl14-datacomp-448 \
        [--pretrained datacomp_xl_s13b_b90k | --pretrained /path/to/open_clip_pytorch_model.bin] \
        [--text-encoder]

Weights: laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K, i.e. open_clip model "ViT-L-14" with
pretrained tag "datacomp_xl_s13b_b90k".  The model was trained at 224x224 (16x16 grid); the
authors run it at 448x448, resizing the 16x16 position table to 32x32 with bicubic
interpolation *with antialiasing* (which, even when upsampling, weighs neighbours differently
from plain bicubic).  That resize is done once here in torch and stored as a constant, since
ONNX has no antialiased bicubic Resize.

Outputs, all [batch, 1 + 32*32, ...] with the class token first:
  stage1..stage3  residual stream after blocks 6, 12, 18 (1-based), width 1024, no norm.
  stage4          the authors' last block (default --stage4 naclip), width 1024: block 24 is
                  replaced by NACLIP's reduced block on the output of block 23 -- key-key
                  attention with a Gaussian neighbourhood bias (std 5 patches) added to the
                  logits, no residual connection and no MLP.  --stage4 raw gives the plain
                  block-24 residual stream instead.
  projected       ln_post(stage4) @ proj, width 768: stage4 in CLIP's joint image-text
                  space, for matching patches against text embeddings.
Input normalisation: CLIP mean/std.

With --text-encoder the CLIP text tower is exported too, as text_encoder.onnx: input
`input_ids` int64 [n, 77] (open_clip's tokenizer output), output `text_embeds` float32
[n, 768], not normalised.  The plugin has no tokenizer, so prompts must be tokenised with
open_clip (or their embeddings precomputed) outside it; see models/README.md.

Needs torch and open_clip_torch (and onnx; onnxruntime to check the result).  They are
imported only after the arguments are parsed, so --help works anywhere.  Not run in this
repository's CI: see models/README.md.
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
        description="Export OpenCLIP ViT-L/14 DataComp to ONNX with stage outputs stage1..stage4 "
        "and `projected`, and write its LogSAD manifest. Requires torch and open_clip_torch.")
    p.add_argument("--out", required=True, help="output folder (model.onnx + manifest.json)")
    p.add_argument("--model", default="ViT-L-14",
                   help="open_clip model name (default ViT-L-14); "
                        "hf-hub:laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K also works and "
                        "ignores --pretrained")
    p.add_argument("--pretrained", default="datacomp_xl_s13b_b90k",
                   help="open_clip pretrained tag or a local checkpoint file "
                        "(default datacomp_xl_s13b_b90k)")
    p.add_argument("--size", type=int, default=448,
                   help="input width and height, a multiple of 14 (default 448 -> 32x32 grid)")
    p.add_argument("--stage-blocks", default="6,12,18,24",
                   help="1-based blocks whose outputs become stage1..N; the last one must be "
                        "the final block when --stage4 is naclip (default 6,12,18,24)")
    p.add_argument("--stage4", choices=["naclip", "raw"], default="naclip",
                   help="last stage: NACLIP reduced block as the authors use (default), or the "
                        "plain output of the last block")
    p.add_argument("--gaussian-std", type=float, default=5.0,
                   help="std, in patches, of NACLIP's neighbourhood bias (default 5)")
    p.add_argument("--no-antialias", action="store_true",
                   help="resize the position table with plain bicubic instead (not the authors')")
    p.add_argument("--text-encoder", action="store_true",
                   help="also export the text tower as text_encoder.onnx")
    p.add_argument("--name", help="manifest name (default openclip-vitl14-datacomp-<size>)")
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
    if args.gaussian_std <= 0:
        p.error("--gaussian-std must be positive")
    args.name = args.name or "openclip-vitl14-datacomp-%d" % args.size
    return args


def load_clip(args):
    import open_clip

    # An "hf-hub:org/repo" model name carries its own weights; a pretrained tag would clash.
    pretrained = None if args.model.startswith("hf-hub:") else args.pretrained
    model = open_clip.create_model(args.model, pretrained=pretrained, device="cpu")
    return model.float().eval()


def neighbourhood_bias(grid_h, grid_w, std):
    """NACLIP's attention-logit bias: exp(-d^2 / (2 std^2)) between patches d apart (in patch
    units), peak 1, not normalised; zero for every pair involving the class token."""
    import numpy as np

    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    r, c = rows.ravel().astype(np.float64), cols.ravel().astype(np.float64)
    d2 = (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2
    n = grid_h * grid_w
    bias = np.zeros((n + 1, n + 1), dtype=np.float32)
    bias[1:, 1:] = np.exp(-d2 / (2.0 * std * std))
    return bias


def build_module(clip, args):
    import torch
    import torch.nn.functional as F
    from torch import nn

    visual = clip.visual
    if getattr(visual, "attn_pool", None) is not None:
        raise SystemExit("attentional pooling towers are not supported")
    blocks = list(visual.transformer.resblocks)
    last = args.stage_blocks[-1]
    if last > len(blocks):
        raise SystemExit("the model has %d blocks, --stage-blocks asks for %d" % (len(blocks), last))
    if args.stage4 == "naclip" and last != len(blocks):
        raise SystemExit("--stage4 naclip replaces the final block (%d); --stage-blocks ends at %d"
                         % (len(blocks), last))
    grid = args.size // PATCH
    width = visual.conv1.out_channels

    with torch.no_grad():
        pos = visual.positional_embedding.detach().float()  # [1 + g*g, width]
        src = int(round((pos.shape[0] - 1) ** 0.5))
        if src * src != pos.shape[0] - 1:
            raise SystemExit("position table is not square")
        table = pos[1:].reshape(1, src, src, width).permute(0, 3, 1, 2)
        if src != grid:
            table = F.interpolate(table, size=(grid, grid), mode="bicubic", align_corners=False,
                                  antialias=not args.no_antialias)
        pos = torch.cat([pos[:1], table.permute(0, 2, 3, 1).reshape(grid * grid, width)], dim=0)
    bias = torch.from_numpy(neighbourhood_bias(grid, grid, args.gaussian_std))

    heads = blocks[0].attn.num_heads
    tokens = 1 + grid * grid

    def split_heads(t):
        # [B, T, width] -> [B, heads, T, width/heads]; -1 keeps the batch dynamic in the export.
        return t.reshape(-1, tokens, heads, width // heads).transpose(1, 2)

    def merge_heads(t):
        return t.transpose(1, 2).reshape(-1, tokens, width)

    class ClipStages(nn.Module):
        """open_clip's VisionTransformer forward at a fixed size, tapping the residual stream.

        The blocks are re-expressed with plain tensor ops instead of calling them: under
        torch.no_grad() nn.MultiheadAttention may take its fused fast path, which the ONNX
        exporter cannot translate, and its traced reshapes have pinned the batch size in
        some torch releases.  check_structure() compares this forward with open_clip's.
        """

        def __init__(self):
            super().__init__()
            self.conv1 = visual.conv1
            self.class_embedding = visual.class_embedding
            self.ln_pre = visual.ln_pre
            n_plain = last - 1 if args.stage4 == "naclip" else last
            self.blocks = nn.ModuleList(blocks[:n_plain])
            self.final = blocks[last - 1]
            self.ln_post = visual.ln_post
            self.proj = visual.proj
            self.taps = [b - 1 for b in args.stage_blocks]
            self.naclip = args.stage4 == "naclip"
            self.register_buffer("pos", pos.unsqueeze(0))
            self.register_buffer("bias", bias)
            self.scale = (width // heads) ** -0.5

        def block(self, blk, x):
            attn = blk.attn
            q, k, v = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            q, k, v = split_heads(q), split_heads(k), split_heads(v)
            weights = (torch.matmul(q, k.transpose(-1, -2)) * self.scale).softmax(dim=-1)
            a = attn.out_proj(merge_heads(torch.matmul(weights, v)))
            # ls_1/ls_2 are layer scales in some open_clip towers, absent or Identity in others.
            x = x + getattr(blk, "ls_1", nn.Identity())(a)
            return x + getattr(blk, "ls_2", nn.Identity())(blk.mlp(blk.ln_2(x)))

        def naclip_block(self, x):
            blk = self.final
            attn = blk.attn
            # NACLIP: keys attend to keys (the query third of in_proj goes unused), with the
            # Gaussian neighbourhood bias on the logits; no residual connection, no MLP.
            _, k, v = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            k, v = split_heads(k), split_heads(v)
            logits = torch.matmul(k, k.transpose(-1, -2)) * self.scale + self.bias
            return attn.out_proj(merge_heads(torch.matmul(logits.softmax(dim=-1), v)))

        def forward(self, x):
            x = self.conv1(x)  # [B, width, g, g]
            x = x.reshape(-1, width, grid * grid).permute(0, 2, 1)
            cls = self.class_embedding.reshape(1, 1, width).expand(x.shape[0], -1, -1)
            x = self.ln_pre(torch.cat([cls, x], dim=1) + self.pos)
            outs = []
            for i, blk in enumerate(self.blocks):
                x = self.block(blk, x)
                if i in self.taps:
                    outs.append(x)
            if self.naclip:
                outs.append(self.naclip_block(x))
            projected = self.ln_post(outs[-1]) @ self.proj
            return tuple(outs) + (projected,)

    for blk in blocks:
        if getattr(blk.attn, "in_proj_weight", None) is None:
            raise SystemExit("expected packed q/k/v projections (in_proj_weight) in every block")
    return ClipStages().eval(), width, visual.proj.shape[1], src


def check_structure(clip, args):
    """At CLIP's native 224 with --stage4 raw, the wrapper's projected class token must equal
    open_clip's own image embedding: proves the hand-written forward matches the library."""
    import numpy as np
    import torch

    native = argparse.Namespace(**vars(args))
    native.size, native.stage4, native.stage_blocks = 224, "raw", [len(clip.visual.transformer.resblocks)]
    plain = build_module(clip, native)[0]
    x = torch.from_numpy(np.random.RandomState(1).randn(1, 3, 224, 224).astype(np.float32))
    with torch.no_grad():
        mine = plain(x)[-1][:, 0]
        ref = clip.encode_image(x)
    d = float((mine - ref).abs().max())
    print("  wrapper at 224 vs open_clip encode_image: max |diff| = %.3g (max |value| %.3g)"
          % (d, float(ref.abs().max())))
    if d > 1e-3 * max(1.0, float(ref.abs().max())):
        raise SystemExit("the re-implemented forward does not match open_clip")


def export_text_encoder(clip, model_name, out_dir, opset, verify):
    import numpy as np
    import open_clip
    import torch
    from torch import nn

    class TextEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = clip

        def forward(self, input_ids):
            return self.clip.encode_text(input_ids)

    module = TextEncoder().eval()
    tokenize = open_clip.get_tokenizer(model_name)
    ids = tokenize(["a photo of a flawless object", "a photo of a damaged object"])
    # Checked on a different number of prompts than exported with, to catch a pinned batch.
    check_ids = tokenize(["a photo of a flawless object", "a photo of a damaged object",
                          "a photo of an object with a defect"])
    path = os.path.join(out_dir, "text_encoder.onnx")
    with AtomicPath(path) as tmp:
        torch_export(module, ids, tmp, ["text_embeds"], opset, input_name="input_ids")
        check_onnx(tmp)
        if verify:
            with torch.no_grad():
                want = module(check_ids).numpy()
            ort_compare(tmp, {"input_ids": check_ids.numpy().astype(np.int64)},
                        {"text_embeds": want}, atol=1e-3)
    print("%s  %s" % (sha256_file(path), path))


def main():
    args = parse_args()
    out_dir = os.path.abspath(args.out)
    out_path = os.path.join(out_dir, "model.onnx")
    if os.path.exists(out_path) and not args.force:
        raise SystemExit("%s exists; use --force to overwrite" % out_path)
    require("numpy", "onnx", "torch", "open_clip")
    os.makedirs(out_dir, exist_ok=True)
    start = time.time()

    import numpy as np
    import torch

    clip = load_clip(args)
    module, width, embed, src_grid = build_module(clip, args)
    check_structure(clip, args)

    names = ["stage%d" % (i + 1) for i in range(len(args.stage_blocks))]
    outputs = names + ["projected"]
    rng = np.random.RandomState(0)
    pixels = rng.uniform(0, 1, (2, 3, args.size, args.size)).astype(np.float32)
    x = (pixels - np.array(CLIP_MEAN, np.float32)[:, None, None]) / \
        np.array(CLIP_STD, np.float32)[:, None, None]
    x = torch.from_numpy(x.astype(np.float32))
    with torch.no_grad():
        ours = [t.numpy() for t in module(x)]

    with AtomicPath(out_path) as tmp:
        torch_export(module, x[:1], tmp, outputs, args.opset)
        check_onnx(tmp)
        if not args.no_verify:
            ort_compare(tmp, {"pixel_values": x.numpy()}, dict(zip(outputs, ours)), atol=1e-3)

    if args.text_encoder:
        export_text_encoder(clip, args.model, out_dir, args.opset, not args.no_verify)

    last = ("NACLIP reduced block in place of block %d (key-key attention, Gaussian "
            "neighbourhood bias std %g, no residual, no MLP)" % (args.stage_blocks[-1], args.gaussian_std)
            if args.stage4 == "naclip" else "block %d" % args.stage_blocks[-1])
    manifest = build_manifest(
        name=args.name, family="clip", width=args.size, height=args.size, patch=PATCH,
        prefix_tokens=1, feature_dim=width, stage_outputs=names,
        mean=CLIP_MEAN, std=CLIP_STD,
        description="OpenCLIP %s (%s) at %dx%d, position table resized %s bicubic%s. Stages: "
                    "residual stream after blocks %s; last stage: %s. Extra output `projected` "
                    "= ln_post(last stage) @ proj, %d-d. Exported by models/export_openclip_vitl14.py."
                    % (args.model, "hf-hub" if args.model.startswith("hf-hub:")
                       else os.path.basename(args.pretrained), args.size, args.size,
                       "%dx%d->%dx%d" % (src_grid, src_grid, args.size // PATCH, args.size // PATCH),
                       "" if args.no_antialias else " with antialias",
                       "/".join(map(str, args.stage_blocks[:-1])), last, embed))
    write_if_changed(os.path.join(out_dir, "manifest.json"), manifest_text(manifest))
    print("%s  %s (%d bytes)" % (sha256_file(out_path), out_path, os.path.getsize(out_path)))
    print("done in %.1f s" % (time.time() - start))


if __name__ == "__main__":
    sys.exit(main())
