"""The merge-method contract: one catalog of names, every method built from it, every method
providing all that MergeMethod declares (callers read only that), and the catalog at the bottom floor."""

import ast
import typing
from pathlib import Path

import pytest
import torch

from rainmerge.config import MergeConfig
from rainmerge.method_catalog import CATALOG, METHOD_NAMES, needs_stages
from rainmerge.methods import BUILDERS, METHODS, MergeMethod, Site
from rainmerge.methods.dare import Dare
from rainmerge.methods.rain import Rain
from rainmerge.methods.task_arithmetic import TaskArithmetic
from rainmerge.methods.ties import Ties

ROOT = Path(__file__).resolve().parents[1]
TRIO = {r: {"path": r} for r in ("base", "instruct", "reasoning")}
CLASSES = {"rain": Rain, "task_arithmetic": TaskArithmetic, "ties": Ties, "dare": Dare}


def _protocol_members() -> set[str]:
    return set(MergeMethod.__annotations__) | {n for n in vars(MergeMethod) if not n.startswith("_")}


def test_one_list_of_names_behind_config_cli_table_and_builders():
    assert tuple(METHODS) == tuple(BUILDERS) == METHOD_NAMES == tuple(CATALOG)
    assert typing.get_args(MergeConfig.model_fields["method"].annotation) == METHOD_NAMES
    assert set(CLASSES) == set(METHOD_NAMES)  # this test covers every method
    for name, info in METHODS.items():
        assert info.name == name and info.needs_stages == CATALOG[name].needs_stages


def test_needs_stages_is_the_one_question():
    assert [m for m in METHOD_NAMES if needs_stages(m)] == ["rain"]
    with pytest.raises(KeyError):
        needs_stages("nope")
    with pytest.raises(ValueError, match="method 'rain' needs reasoning_calibration"):
        MergeConfig(method="rain", **TRIO)
    assert MergeConfig(method="ties", **TRIO).method == "ties"


def test_every_method_class_provides_what_the_protocol_declares():
    members = _protocol_members()
    assert {"name", "accepts_raw", "propagates_nonfinite", "device", "merge", "stats", "summary",
            "warnings"} <= members
    for name, cls in CLASSES.items():
        missing = sorted(m for m in members if not hasattr(cls, m))
        assert missing == [], (name, missing)
        assert cls.name == name


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare"])
def test_baselines_built_from_the_table_answer_the_protocol(method):
    cfg = MergeConfig(method=method, **TRIO, strength=0.5, density=0.5)
    m = METHODS[method].build(cfg)
    g = torch.Generator().manual_seed(0)
    r, b, i = (torch.randn(4, 6, generator=g) for _ in range(3))
    out = m.merge(Site(0, "q", "w.q"), r, b, i)
    assert out.shape == r.shape and out.dtype == torch.float32
    assert set(m.stats()) == {"w.q"} and m.stats()["w.q"]["delta_norm"] > 0
    assert m.summary() == "" and m.warnings == [] and m.device == "cpu"
    assert isinstance(m.accepts_raw, bool) and isinstance(m.propagates_nonfinite, bool)


def test_catalog_sits_at_the_bottom_floor():
    """The config names the methods through the catalog, which imports nothing of rainmerge, so the
    config does not sit above the methods' code (projection, rounding, peft)."""
    def imports(path: Path) -> set[str]:
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                out.add("." * node.level + (node.module or ""))
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
        return out

    assert not [i for i in imports(ROOT / "rainmerge/method_catalog.py") if i.startswith((".", "rainmerge"))]
    assert not [i for i in imports(ROOT / "rainmerge/config.py") if "methods" in i]
