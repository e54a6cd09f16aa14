#!/usr/bin/env bash
# Behaviour check for refactors: merge the toy trio with configs/toy.yaml (rain) and with task
# arithmetic, and print the sha256 of each output's model.safetensors and rain_alpha.json. Run it on
# the commit before and after a refactor: the lines must be identical.
#   bash scripts/toy_digest.sh [TRIO_DIR]     (default assets/toy; a frozen copy keeps the input fixed
#                                              while the toy itself is being rebuilt)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
TRIO="$(cd "${1:-$ROOT/assets/toy}" && pwd)"
OUT="$(mktemp -d)"; trap 'rm -rf "$OUT"' EXIT
for method in rain task_arithmetic; do
  OMP_NUM_THREADS=1 "$VENV/bin/python" -m rainmerge merge --config "$ROOT/configs/toy.yaml" --quiet \
    --base "$TRIO/base" --instruct "$TRIO/instruct" --reasoning "$TRIO/reasoning" \
    --reasoning-calibration "$TRIO/data/reasoning_calibration.json" \
    --instruction-calibration "$TRIO/data/instruction_calibration.jsonl" \
    --device cpu --method "$method" --output "$OUT/$method" >/dev/null 2>&1
  for f in model.safetensors rain_alpha.json; do
    if [ -f "$OUT/$method/$f" ]; then echo "$method $f $(sha256sum "$OUT/$method/$f" | cut -d' ' -f1)"; fi
  done
done
