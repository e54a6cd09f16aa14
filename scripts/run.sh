#!/usr/bin/env bash
# The main job: set up the locked environment, then run the RAIN pipeline on the embedded toy trio
# (local ZenML store in .zenml-global, MLflow SQLite store in .mlflow). Extra args go to `rainmerge run`.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
exec "$VENV/bin/python" -m rainmerge run --config configs/toy.yaml "$@"
