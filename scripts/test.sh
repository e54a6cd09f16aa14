#!/usr/bin/env bash
# The project's test command: set up the locked environment, then run the suite offline.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
run=("$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@")
# an empty network namespace proves no test touches the network (root only; skipped elsewhere);
# its loopback is brought up so tests can start real servers (MLflow, ZenML, S3, inference) on 127.0.0.1
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  exec unshare -n sh -c 'ip link set lo up 2>/dev/null || echo "test.sh: loopback left down" >&2; exec "$@"' sh "${run[@]}"
fi
exec "${run[@]}"
