#!/usr/bin/env bash
# Create .venv from the committed lock (idempotent: skips when the lock is unchanged).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
stamp="$VENV/.rainmerge-lock-sha"
want="$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-64)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
t0=$SECONDS
step() { echo "setup: [$1/4] $2 ($((SECONDS - t0)) s so far; about 2-4 min in all on a 2-core box)" >&2; }
step 1 "virtual environment in $VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# pip's own lines that say what it is doing (one per package), without its noise; a failure is caught by the
# import check below
pip() {
  "$VENV/bin/pip" "$@" --progress-bar off 2>&1 | grep --line-buffered -v "is ignored" \
    | grep --line-buffered -E "^(Collecting|Downloading|Installing collected|Successfully installed|ERROR)" \
    | sed -u 's/^/setup:   /' >&2 || true
}
# a line every ${SETUP_HEARTBEAT_S:-30} s while a step runs, so a long download or build is never silent
beat() {
  local label=$1; shift
  ( while sleep "${SETUP_HEARTBEAT_S:-30}"; do
      echo "setup:   ... still $label ($((SECONDS - t0)) s so far)" >&2
    done ) &
  local hb=$! rc=0
  "$@" || rc=$?
  kill "$hb" 2>/dev/null; wait "$hb" 2>/dev/null || true
  return "$rc"
}
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
step 2 "torch 2.13.0 (CPU wheel)"
beat "installing torch" pip install torch==2.13.0
step 3 "the locked stack (requirements.lock: transformers, zenml, mlflow, ...)"
beat "installing the locked stack" pip install -r requirements.lock
step 4 "rainmerge itself (editable)"
beat "installing rainmerge" pip install -q --no-deps --no-build-isolation -e .
echo "setup: checking that the stack imports" >&2
"$VENV/bin/python" -c "import torch, transformers, safetensors, peft, rainmerge" \
  || { echo "setup: import check failed" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup: done in $((SECONDS - t0)) s" >&2
