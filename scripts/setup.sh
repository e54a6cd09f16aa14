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
pip() { "$VENV/bin/pip" "$@" 2>&1 | grep -v "is ignored" || true; }
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
step 2 "torch 2.13.0 (CPU wheel)"
pip install -q torch==2.13.0
step 3 "the locked stack (requirements.lock: transformers, zenml, mlflow, ...)"
pip install -q -r requirements.lock
step 4 "rainmerge itself (editable)"
pip install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, transformers, safetensors, peft, rainmerge" \
  || { echo "setup: import check failed" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup: done in $((SECONDS - t0)) s" >&2
