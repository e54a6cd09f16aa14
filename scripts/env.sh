# Offline, project-local settings shared by every script (source it).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export ZENML_ANALYTICS_OPT_IN=false ZENML_AUTO_OPEN_DASHBOARD=false
export ZENML_CONFIG_PATH="${ZENML_CONFIG_PATH:-$ROOT/.zenml-global}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$ROOT/.mlflow/mlflow.db}"
export NLTK_DATA="${NLTK_DATA:-$ROOT/.venv/nltk_data}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
VENV="${VENV:-$ROOT/.venv}"
export VENV
