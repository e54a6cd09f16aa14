"""The house's floors: the layer order, written down once, bottom to top, and a test that fails when a
module imports one of its own layer (another room) or of a layer above. Every import counts: module
level, inside functions and under TYPE_CHECKING. A room is a package (the ones in PACKAGES, imports
inside it are free: tests/test_boundary.py keeps them free of cycles) or a single module, so the
number of layers bounds the height of the import graph.

To place a new module: put it in the lowest layer above everything it imports. Where that is not the
layer it belongs to by meaning, the import is the thing to look at.

Named, not imported (so no arrow here): rainmerge.cli adds its optional command sets by name
(COMMAND_SETS: pipelines.commands, rainmerge.product.commands; K8S_WRITER for `plan --write-k8s`), pipelines.rain_merge finds the ZenML step of a
DAG row by name, and `python -m rainmerge.eval compare` hands its line to `python -m rainmerge`.
"""

from __future__ import annotations

import pytest

from tests.imports import ROOT, imports, module_name

SOURCES = ("rainmerge", "steps", "pipelines", "benchmarks", "scripts", "k8s")
# rooms bigger than a module (their modules import each other freely)
PACKAGES = ("rainmerge.io", "rainmerge.eval", "rainmerge.preflight", "rainmerge.product", "rainmerge.toy",
            "rainmerge.methods", "steps", "pipelines", "benchmarks", "scripts", "k8s")

LAYERS: list[tuple[str, set[str]]] = [  # bottom to top
    ("names, errors, the dtype table, the method catalog, small pure helpers",
     {"rainmerge", "rainmerge.errors", "rainmerge.redact", "rainmerge.diagnostics", "rainmerge.factorize",
      "rainmerge.linears", "rainmerge.refs", "rainmerge.transfer", "rainmerge.dtypes", "rainmerge.method_catalog"}),
    ("architecture adapter, logging, sizes, --set values, Stage 1 projection",
     {"rainmerge.arch", "rainmerge.logs", "rainmerge.memory", "rainmerge.overrides", "rainmerge.projection"}),
    ("Stage 2 coefficients, Stage 3 rounding, safetensors I/O",
     {"rainmerge.coefficients", "rainmerge.rounding", "rainmerge.io"}),
    ("calibration sets, merge methods, the model loader, synthetic inputs",
     {"rainmerge.calibration", "rainmerge.methods", "rainmerge.loading", "rainmerge.synthetic"}),
    ("the validated config, Stage 1 features, the streaming merge, the toy",
     {"rainmerge.config", "rainmerge.features", "rainmerge.merge", "rainmerge.toy"}),
    ("Stage 2 attention, the merge context, evaluation",
     {"rainmerge.attention", "rainmerge.context", "rainmerge.eval"}),
    ("calibration builder, pre-flight plan and the merge start's checks, provenance, the layer-sequential path",
     {"rainmerge.calibration_builder", "rainmerge.preflight", "rainmerge.provenance", "rainmerge.sequential"}),
    ("the stages of a merge", {"rainmerge.stages"}),
    ("compare, the product layer", {"rainmerge.compare", "rainmerge.product"}),
    ("command line, ZenML steps and pipelines, Kubeflow, benchmarks",
     {"rainmerge.cli", "steps", "pipelines", "k8s", "benchmarks"}),
    ("entry points and project scripts", {"rainmerge.__main__", "scripts"}),
]
MAX_LAYERS = 11  # issue 23: the house stays at most this tall


def room(module: str) -> str:
    return next((p for p in PACKAGES if module == p or module.startswith(p + ".")), module)


def wrong_way(graph: dict[str, set[str]], layers: list[tuple[str, set[str]]]) -> list[str]:
    """`a -> b (layer i -> j)` for each import of a room that is not in a lower layer than a's own."""
    level = {r: i for i, (_, rooms) in enumerate(layers) for r in rooms}
    out = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            a, b = room(mod), room(dep)
            if a != b and level[b] >= level[a]:
                out.append(f"{mod} -> {dep} (layer {level[a] + 1} -> {level[b] + 1})")
    return out


def _graph() -> dict[str, set[str]]:
    files = [f for top in SOURCES for f in (ROOT / top).rglob("*.py")]
    known = {module_name(f) for f in files}
    return {module_name(f): {i for i in imports(f) if i in known and i != module_name(f)} for f in files}


def test_every_room_stands_on_one_layer():
    placed = [r for _, rooms in LAYERS for r in rooms]
    assert len(placed) == len(set(placed)), "a room is on two layers"
    unplaced = sorted({room(m) for m in _graph()} - set(placed))
    assert unplaced == [], f"place these in LAYERS (tests/test_layering.py): {unplaced}"
    assert sorted(set(placed) - {room(m) for m in _graph()}) == [], "LAYERS names a room that is gone"


def test_no_import_runs_sideways_or_back_up():
    assert wrong_way(_graph(), LAYERS) == []


def test_the_house_is_at_most_eleven_layers_tall():
    assert len(LAYERS) <= MAX_LAYERS


@pytest.mark.parametrize("graph,expected", [
    ({"rainmerge.errors": {"rainmerge.stages"}}, ["rainmerge.errors -> rainmerge.stages (layer 1 -> 8)"]),
    ({"rainmerge.arch": {"rainmerge.memory"}}, ["rainmerge.arch -> rainmerge.memory (layer 2 -> 2)"]),
    ({"rainmerge.io.spill": {"rainmerge.features"}}, ["rainmerge.io.spill -> rainmerge.features (layer 3 -> 5)"]),
    ({"rainmerge.product.commands": {"pipelines.run"}}, ["rainmerge.product.commands -> pipelines.run (layer 9 -> 10)"]),
    ({"rainmerge.io.spill": {"rainmerge.io.lazy"}, "rainmerge.stages": {"rainmerge.errors"}}, []),
])
def test_the_check_sees_an_import_that_runs_the_wrong_way(graph, expected):
    assert wrong_way(graph, LAYERS) == expected


def test_the_command_sets_the_cli_names_are_there():
    """COMMAND_SETS is by name and an ImportError only drops a set (the extra not installed): a misspelt or
    moved module would drop its commands silently, so with the extra installed here every one must load."""
    from rainmerge.cli import COMMAND_SETS, _parser

    assert all((ROOT / (name.replace(".", "/") + ".py")).is_file() for name in COMMAND_SETS), COMMAND_SETS
    _, handlers = _parser()
    assert {"merge", "plan", "run", "snapshot", "promote", "lineage", "audit"} <= set(handlers), sorted(handlers)
