import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tempfile  # noqa: E402

# a throwaway ZenML store and MLflow database for the whole session, set before zenml is imported
_STORES = tempfile.mkdtemp(prefix="rainmerge-test-stores-")
os.environ["ZENML_CONFIG_PATH"] = os.path.join(_STORES, "zenml")
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///" + os.path.join(_STORES, "mlflow", "mlflow.db")
os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
os.environ["ZENML_AUTO_OPEN_DASHBOARD"] = "false"
os.environ["RAINMERGE_TEST_STORES"] = _STORES

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.tiny import build_trio, write_calibration  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rain-reference-calibration"


@pytest.fixture(scope="session")
def trio_factory(tmp_path_factory):
    cache = {}

    def make(arch: str = "qwen2", **kw):
        key = (arch, tuple(sorted(kw.items())))
        if key not in cache:
            root = tmp_path_factory.mktemp(f"trio_{arch}")
            cache[key] = build_trio(root, arch, **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def calib(tmp_path_factory):
    return write_calibration(tmp_path_factory.mktemp("calib"))
