"""Command line: `python -m rainmerge merge ...`; flags override the YAML config."""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from .errors import ConfigError, RainMergeError
from .methods import METHOD_NAMES
from .overrides import parse_sets
from .redact import redact


def _merge_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge an instruction model into a reasoning model")
    p.add_argument("--config", help="YAML config (e.g. configs/toy.yaml); the flags below override it")
    p.add_argument("--base", help="base model dir or Hub id")
    p.add_argument("--instruct", help="instruction-tuned model (ITM) dir or Hub id")
    p.add_argument("--reasoning", help="reasoning model (LRM) dir or Hub id")
    p.add_argument("--base-revision", help="Hub revision (branch, tag or commit) of the base model")
    p.add_argument("--instruct-revision", help="Hub revision of the instruction model")
    p.add_argument("--reasoning-revision", help="Hub revision of the reasoning model")
    p.add_argument("--reasoning-calibration", help="reasoning calibration JSON (Stage 1)")
    p.add_argument("--instruction-calibration", help="instruction calibration JSONL (Stage 2)")
    p.add_argument("--output", help="output model directory (written atomically)")
    p.add_argument("--method", choices=METHOD_NAMES, help="merge method (default: rain)")
    p.add_argument("--strength", type=float, help="global lambda")
    p.add_argument("--density", type=float, help="TIES/DARE density")
    p.add_argument("--layers", help="comma-separated layer indices (default: all)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="where forwards and projections run")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace an earlier rainmerge output at --output (never any other folder)")
    p.add_argument("--no-stage2", action="store_true", help="uniform alpha (Stage-1-only ablation)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, dotted (e.g. stage1.radius=3); YAML-parsed value")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="check a merge from metadata only (configs, shard headers, tokenizer, "
                       "calibration) before any weight is downloaded; exit 2 when it would fail")
    p.add_argument("--config", required=True, help="YAML config (a merge or pipeline config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, dotted (e.g. stage1.radius=2); the value is YAML-parsed")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--k8s", action="store_true", help="print only what a pod needs for the chosen path (JSON: "
                   "volume_size, memory_request, memory_limit, gpus, gpu_memory_per_device, stages_path, "
                   "evaluation_gpus, evaluation_gpu_memory_per_device)")
    p.add_argument("--write-k8s", metavar="REPO_ROOT", help="with --k8s: record the sizes in configs/k8s/sizes.yaml "
                   "and write configs/k8s/<config>.zenml.yaml and k8s/overlays/<config>/ under REPO_ROOT")


def _own_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """A command that parses its own flags (`rainmerge NAME --help` shows them); listed here for --help."""
    p = sub.add_parser(name, add_help=False, help=f"{help}; `rainmerge {name} --help` for its flags")
    p.add_argument("args", nargs=argparse.REMAINDER)


def _overrides(a: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {
        "base.path": a.base, "instruct.path": a.instruct, "reasoning.path": a.reasoning,
        "base.revision": a.base_revision, "instruct.revision": a.instruct_revision,
        "reasoning.revision": a.reasoning_revision,
        "reasoning_calibration.path": a.reasoning_calibration,
        "instruction_calibration.path": a.instruction_calibration,
        "output": a.output, "method": a.method, "strength": a.strength, "density": a.density,
        "device": a.device, "overwrite": a.overwrite,
        "layers": [int(x) for x in a.layers.split(",")] if a.layers else None,
        "stage2.enabled": False if a.no_stage2 else None,
    }
    o.update(parse_sets(a.set))
    return o


# optional command sets (the pipeline extra), loaded by name: the library imports no product module, and
# neither it nor the product layer imports pipelines/ (which starts pipelines, so it stands above both).
# Each has add_parsers(sub) and dispatch(args, parse_sets); `rainmerge --help` lists them in this order.
COMMAND_SETS = ("pipelines.commands", "rainmerge.product.commands")
K8S_WRITER = "rainmerge.product.k8s"  # `plan --k8s --write-k8s`, by name for the same reason


def _merge(a: argparse.Namespace) -> int:
    from .config import load_config
    from .stages import run_merge

    cfg = load_config(a.config, _overrides(a))
    before = os.environ.get("TQDM_DISABLE")
    if a.quiet:  # also the bars of library steps that take no `progress` flag (tqdm reads TQDM_*)
        os.environ["TQDM_DISABLE"] = "1"
    try:
        out = run_merge(cfg, progress=not a.quiet)
    finally:  # main may run in-process (tests): leave the environment as it was
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before
    print(out)
    return 0


def _plan(a: argparse.Namespace) -> int:
    from .config import load_config
    from .preflight import build_plan, format_plan
    from .preflight.eval_placement import format_placement, placement_from_config

    sets = parse_sets(a.set)
    rep = build_plan(load_config(a.config, sets))
    params = (rep.inputs.get("reasoning") and rep.inputs["reasoning"].params) or 0
    place = placement_from_config(a.config, sets, rep.arch, params)
    if a.k8s:
        return _plan_k8s(a, rep, place)
    from .preflight.evaluation import estimate_from_config, format_evaluation

    ev = estimate_from_config(a.config, sets, params)
    if a.json:
        print(json.dumps(json.loads(rep.to_json()) | {"evaluation": ev and ev.model_dump(),
                                                       "evaluation_placement": place and place.model_dump()},
                         indent=2))
    else:
        print(format_plan(rep) + (format_evaluation(ev) if ev else "") + (format_placement(place) if place else ""))
    return 0 if rep.ok and (place is None or place.fits) else 2


def _plan_k8s(a: argparse.Namespace, rep: Any, place: Any) -> int:
    """`plan --k8s`: what the pods need (JSON), and with --write-k8s the committed sizing files."""
    from .memory import gi

    res = rep.resources
    if not res:
        print(rep.to_json())
        return 2
    # the quantity the sizing files write (rainmerge.product.k8s.pod_sizes), floor included
    ev = {"evaluation_gpus": place.gpus if place else 1,
          "evaluation_gpu_memory_per_device": gi(place.per_gpu_bytes) if place else None}
    print(json.dumps(res.k8s | {"stages_path": res.stages_path} | ev, indent=2))
    if a.write_k8s:  # the sizing files are the product's (ZenML run config, k8s overlays): loaded by name
        try:
            k8s = importlib.import_module(K8S_WRITER)
        except ImportError as exc:
            raise ConfigError(f"--write-k8s needs the pipeline extra (pip install 'rainmerge[pipeline]'): {exc}")
        for path in k8s.write(a.write_k8s, a.config, k8s.pod_sizes(res.k8s, res.stages_path, place)):
            print(f"wrote {path}", file=sys.stderr)
    return 0 if rep.ok else 2


def _parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    """The whole command line, and which function runs each command."""
    parser = argparse.ArgumentParser(prog="rainmerge", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    _merge_parser(sub)
    _plan_parser(sub)
    _own_parser(sub, "calibrate", "build a reasoning calibration set from your own prompts and the LRM's own "
                "greedy traces (well-formed ones kept, drops counted)")
    _own_parser(sub, "compare", "merge the trio with each method and evaluate the LRM, the ITM and the merges")
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {"merge": _merge, "plan": _plan}
    for name in COMMAND_SETS:
        try:  # an optional extra: `pip install rainmerge[pipeline]`
            commands = importlib.import_module(name)
        except ImportError:
            continue
        before = set(sub.choices)
        commands.add_parsers(sub)
        for cmd in set(sub.choices) - before:
            handlers[cmd] = functools.partial(commands.dispatch, sets=parse_sets)
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # commands with their own flags (argparse's REMAINDER would swallow none that start with -)
    if argv[:1] == ["calibrate"]:
        from .calibration_builder import main as calibrate

        return calibrate(argv[1:])
    if argv[:1] == ["compare"]:
        from .compare import main as compare

        return compare(argv[1:])
    parser, handlers = _parser()
    a = parser.parse_args(argv)
    from .logs import setup

    setup()
    restore = _on_sigterm()
    try:
        return handlers[a.cmd](a)
    except RainMergeError as exc:
        print(f"rainmerge: error: {redact(exc)}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        # the with-blocks on the way out removed the temporary folder and released the lock
        what = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else "terminated (SIGTERM)"
        print(f"rainmerge: {what}: stopped; its temporary files and output lock were removed, nothing was "
              "written to the output; run the same command again to start over", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    finally:
        restore()


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every with-block (output lock, temporary folder) unwinds."""


def _on_sigterm() -> Any:
    """SIGTERM unwinds like Ctrl-C instead of killing the process with its temporary folder and lock in
    place; returns the function that puts the previous handler back (main may be called in-process)."""
    import signal

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        prev = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, prev)
