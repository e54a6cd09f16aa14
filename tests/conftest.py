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


@pytest.fixture(autouse=True)
def _rainmerge_records_reach_caplog(caplog):
    """The CLI's console setup stops `rainmerge` records at its own handler (each line once), so
    they would never reach caplog's root handler: hand them to caplog directly."""
    import logging

    log = logging.getLogger("rainmerge")
    log.addHandler(caplog.handler)
    yield
    log.removeHandler(caplog.handler)


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


# Test tiers: `bash scripts/test.sh -m fast` is the quick loop (maths, io, calibration, CLI errors);
# plain `bash scripts/test.sh` (what CI runs) is everything. Whole files are slow when they run
# real pipelines, train or evaluate models, or compile/validate deployment specs.
SLOW_FILES = {"test_pipeline.py", "test_kfp.py", "test_toy.py", "test_k8s.py", "test_real_vocab.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        slow = item.path.name in SLOW_FILES or item.get_closest_marker("slow") is not None
        item.add_marker(pytest.mark.slow if slow else pytest.mark.fast)
