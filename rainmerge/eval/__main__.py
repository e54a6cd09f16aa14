"""python -m rainmerge.eval {model,compare} ...

    model:   evaluate one model folder.
    compare: merge the toy (or any) trio with each method and evaluate LRM, ITM and the merges; the same
             command as `rainmerge compare` (rainmerge/compare.py), which this entry hands the line to.
"""

from __future__ import annotations

import argparse
import runpy
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        # `compare` runs merges, so it lives above this package (`rainmerge compare`): this entry hands the
        # whole line to the program's front door, as a shell alias would, and imports nothing above it
        return _front_door(argv)
    ap = argparse.ArgumentParser(prog="python -m rainmerge.eval")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model", help="evaluate one model folder")
    m.add_argument("--model", required=True)
    m.add_argument("--data", required=True, help="folder with eval_*.jsonl")
    m.add_argument("--lrm", help="LRM folder, for L_think")
    m.add_argument("--calibration", help="instruction calibration file whose prompts are held out")
    m.add_argument("--out", help="write metrics JSON here")
    m.add_argument("--limit", type=int)
    m.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    m.add_argument("--quiet", action="store_true")
    sub.add_parser("compare", help="merge with each method and evaluate all (`rainmerge compare`)", add_help=False)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .suite import evaluate_model

    res = evaluate_model(a.model, a.data, lrm_dir=a.lrm, calibration=a.calibration, device=a.device,
                         limit=a.limit, progress=not a.quiet)
    text = json.dumps(res, indent=2)
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return 0


def _front_door(argv: list[str]) -> int:
    """`python -m rainmerge ARGV`, in this process: it ends in SystemExit with the command's exit code."""
    saved = sys.argv
    sys.argv = ["rainmerge", *argv]
    try:
        runpy.run_module("rainmerge", run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
