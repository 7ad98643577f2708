#!/usr/bin/env bash
# The results table of docs/results.md (Textile set): `logsad eval` on the textile set (PyPI conformal-clip-data 0.1.4)
# for 1, 2 and 4 shots and each detector option, image AUROC nominal vs local, vs global, vs all.
#   scripts/textile-results.sh                       # every option below
#   scripts/textile-results.sh "--tiles 3x3"         # only the options given (one per argument)
# Protocol (`logsad eval`, plain layout): references the first k nominal images by name,
# calibration the last 20 of the training half (nominal 481-500), test the first N nominal images
# of the test half and the first N local and N global defects. Env: N (60), SHOTS ("1 2 4").
# Reports land in out/textile-results/; a markdown table goes to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${LOGSAD_DATA_DIR:-$PWD/.deps}/data/textile
BIN=${LOGSAD_BIN:-target/release/logsad}
N=${N:-60}
SHOTS=${SHOTS:-1 2 4}
OUT=out/textile-results
mkdir -p "$OUT"

if [ $# -gt 0 ]; then
  options=("$@")
else
  options=(
    ""
    "--tiles 2x2"
    "--tiles 3x3"
    "--tiles 2x2 --overlap 0.5"
    "--tiles 2x2 --overlap 0.5 --score top10"
    "--tiles 2x2 --smoothing 1"
    "--resize letterbox"
    "--preset multiscale"
  )
fi

slug() { local s=${1:-faithful}; s=${s//--/}; s=${s// /-}; echo "${s//[^a-zA-Z0-9.-]/}"; }

echo "| options | $(for k in $SHOTS; do printf '%s-shot local / global / all | ' "$k"; done)ms per image, last k |"
echo "|---|$(for _ in $SHOTS; do printf -- '---|'; done)---|"
for opts in "${options[@]}"; do
  row="| \`${opts:-(faithful)}\` |"
  ms=""
  for k in $SHOTS; do
    dir="$OUT/$(slug "$opts")-k$k"
    # shellcheck disable=SC2086 # options are split on purpose
    "$BIN" eval --shots "$k" --test-limit "$N" --no-pixel --out "$dir" $opts "$DATA" >"$dir.log" 2>&1 \
      || { mkdir -p "$dir"; cat "$dir.log" >&2; exit 1; }
    cell=$(python3 - "$dir/report.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["draws"][0]["categories"][0]
by = {d["defect"]: d["auroc"] for d in c["defects"]}
print(f'{by["local"]:.3f} / {by["global"]:.3f} / {c["image_auroc"]:.3f}|{c["timing"]["per_image_ms"]:.0f}')
PY
)
    row="$row ${cell%|*} |"
    ms=${cell#*|}
  done
  echo "$row $ms |"
done
