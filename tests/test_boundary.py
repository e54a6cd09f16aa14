"""The house's walls: the merge library imports no orchestration/tracking stack, and no module
imports back up into a cycle."""

import subprocess
import sys

from tests.imports import ROOT, imports as _imports, module_name as _module

PKG = ROOT / "rainmerge"
PRODUCT_ONLY = ("zenml", "mlflow", "kfp", "pipelines", "steps")
OPTIONAL = ("matplotlib",)  # optional plots: imported inside the function that draws, ImportError tolerated


def _library_files():
    return [p for p in PKG.rglob("*.py") if "product" not in p.relative_to(PKG).parts]


def test_library_imports_no_product_stack_anywhere_in_its_source():
    """No door either: the CLI adds the optional command sets by name (rainmerge.cli.COMMAND_SETS)."""
    bad = []
    for f in _library_files():
        for imp in _imports(f, top_level_only=False):
            if imp.split(".")[0] in PRODUCT_ONLY or imp.startswith("rainmerge.product"):
                bad.append(f"{_module(f)} -> {imp}")
        bad += [f"{_module(f)} -> {imp} (top level)" for imp in _imports(f, top_level_only=True)
                if imp.split(".")[0] in OPTIONAL]
    assert bad == []


def test_importing_the_library_loads_no_product_stack():
    mods = [_module(f) for f in _library_files() if not f.name.startswith("__main__")]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods) +
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {PRODUCT_ONLY + OPTIONAL!r})\nprint(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_no_import_cycles_between_modules():
    """Function-level (lazy) imports count too: a lazy import is still a dependency."""
    files = list(PKG.rglob("*.py")) + list((ROOT / "steps").glob("*.py")) + list((ROOT / "pipelines").glob("*.py"))
    known = {_module(f) for f in files}
    graph = {_module(f): {i for i in _imports(f, top_level_only=False) if i in known and i != _module(f)}
             for f in files}
    # a package's __init__ importing its own submodules is not a cycle back up
    for mod, deps in graph.items():
        graph[mod] = {d for d in deps if not mod.startswith(d + ".") or d.count(".") < mod.count(".") - 1}
    state: dict[str, int] = {}
    cycles = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d] if d in stack else [n, d])
            elif d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert cycles == []


def test_product_layer_does_not_import_the_zenml_wrappers_at_module_level():
    for f in (PKG / "product").glob("*.py"):
        for imp in _imports(f, top_level_only=True):
            assert imp.split(".")[0] not in ("steps", "pipelines"), (f.name, imp)
