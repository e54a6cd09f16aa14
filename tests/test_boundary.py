"""The house's walls: the merge library imports no orchestration/tracking stack, and no module
imports back up into a cycle."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "rainmerge"
PRODUCT_ONLY = ("zenml", "mlflow", "kfp", "pipelines", "steps")
OPTIONAL = ("matplotlib",)  # optional plots: imported inside the function that draws, ImportError tolerated
ALLOWED: set[tuple[str, str]] = set()  # no door: the CLI names its optional command sets (rainmerge.cli.COMMAND_SETS)


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                out.add(target)
                if not node.module:
                    out |= {f"{target}.{a.name}" for a in node.names}
            else:
                out.add(node.module)
    return out


def _library_files():
    return [p for p in PKG.rglob("*.py") if "product" not in p.relative_to(PKG).parts]


def test_library_imports_no_product_stack_anywhere_in_its_source():
    bad = []
    for f in _library_files():
        for imp in _imports(f, top_level_only=False):
            if (_module(f), imp) in ALLOWED:
                continue
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
