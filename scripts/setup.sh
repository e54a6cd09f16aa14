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
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
pip() { "$VENV/bin/pip" "$@" 2>&1 | grep -v "is ignored" || true; }
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
pip install -q torch==2.13.0
pip install -q -r requirements.lock
pip install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, transformers, safetensors, peft, rainmerge" \
  || { echo "setup: import check failed" >&2; exit 1; }
echo "$want" > "$stamp"
