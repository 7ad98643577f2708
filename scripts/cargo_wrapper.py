#!/usr/bin/env python3
"""Meson's bridge to cargo: build in release mode and copy the artefacts where meson expects."""
import argparse
import os
import shutil
import subprocess
import sys

p = argparse.ArgumentParser()
p.add_argument("--manifest-dir", required=True)
p.add_argument("--target-dir", required=True)
p.add_argument("--data-dir", required=True)
p.add_argument("--out-dir", required=True)
args = p.parse_args()

env = dict(os.environ, LOGSAD_DATA_DIR=args.data_dir)
cmd = ["cargo", "build", "--release", "--locked",
       "--manifest-path", os.path.join(args.manifest_dir, "Cargo.toml"),
       "--target-dir", args.target_dir]
if subprocess.call(cmd, env=env) != 0:
    sys.exit(1)
for name in ("libgstlogsad.so", "logsad"):
    shutil.copy2(os.path.join(args.target_dir, "release", name), os.path.join(args.out_dir, name))
