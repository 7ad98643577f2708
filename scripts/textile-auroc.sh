#!/usr/bin/env bash
# Image AUROC of the patch detector on the textile set (PyPI conformal-clip-data 0.1.4), k-shot.
#   scripts/textile-auroc.sh                    # faithful: whole-frame resize
#   scripts/textile-auroc.sh --tiles 2x2        # tiled; any `logsad enroll` option may follow
# References: nominal textile_0001..k; validation: the next 20 nominal images; test: N nominal
# (from textile_0501 on, never enrolled), N local and N global defects. Env: SHOTS (4), N (60).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${LOGSAD_DATA_DIR:-$PWD/.deps}/data/textile
BIN=${LOGSAD_BIN:-target/release/logsad}
SHOTS=${SHOTS:-4}
N=${N:-60}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

nominal=("$DATA"/nominal/*.jpg)
"$BIN" enroll --shots "$SHOTS" "$@" \
  --validation "${nominal[@]:$SHOTS:20}" --out "$work/profile.logsad" "${nominal[@]:0:$SHOTS}"
test_nominal=("${nominal[@]:500:$N}")
local_defects=("$DATA"/local/*.jpg)
global_defects=("$DATA"/global/*.jpg)
"$BIN" score --profile "$work/profile.logsad" \
  "${test_nominal[@]}" "${local_defects[@]:0:$N}" "${global_defects[@]:0:$N}" > "$work/scores.jsonl"

python3 - "$work/scores.jsonl" <<'PY'
import json, sys

rows = [json.loads(line) for line in open(sys.argv[1])]

def auroc(pos, neg):
    # Probability that a defect outscores a nominal image, ties counting one half.
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))

def kind(row):
    return row["path"].split("/")[-2]

for key, label in (("score", "image score"), ("map_mean", "mean of the map")):
    by = {k: [r[key] for r in rows if kind(r) == k] for k in ("nominal", "local", "global")}
    print(f"{label:26s} nominal vs local {auroc(by['local'], by['nominal']):.3f}  "
          f"vs global {auroc(by['global'], by['nominal']):.3f}  "
          f"vs all {auroc(by['local'] + by['global'], by['nominal']):.3f}")
PY
