#!/usr/bin/env bash
# The project's test command: set up the locked environment, then run the suite offline.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
run=("$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@")
# an empty network namespace proves no test touches the network (root only; skipped elsewhere)
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  exec unshare -n "${run[@]}"
fi
exec "${run[@]}"
