"""python -m rainmerge.eval {model,compare} ...

    compare: merge the toy (or any) trio with each method and evaluate LRM, ITM and the merges.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

def _default_methods() -> str:
    from ..methods import METHODS

    return ",".join(["lrm", "itm", *(m.name for m in METHODS.values() if m.compared_by_default)])


def compare(config: str, out: Path, methods: list[str], data: Path | None, limit: int | None, device: str,
            progress: bool, overrides: dict | None = None) -> list[dict]:
    from ..config import load_config
    from ..stages import run_merge
    from . import report
    from .suite import default_data_dir, evaluate_model, held_out_file

    base_cfg = load_config(config, overrides)
    data = Path(data or default_data_dir(base_cfg))
    if not (data / "eval_instructions.jsonl").is_file():
        raise SystemExit(f"evaluation data not found in {data}; pass --data DIR")
    cal = held_out_file(base_cfg)
    rows = []
    for m in methods:
        if m in ("lrm", "itm"):
            folder = base_cfg.reasoning.path if m == "lrm" else base_cfg.instruct.path
        else:
            folder = str(out / "models" / m)
            cfg = base_cfg.model_copy(update={"method": m, "output": folder, "overwrite": True})
            run_merge(load_config(None, cfg.model_dump(mode="json")), progress=progress)
        res = evaluate_model(folder, data, lrm_dir=base_cfg.reasoning.path, calibration=cal, device=device,
                             limit=limit, progress=progress, name=m)
        res.pop("examples", None)
        rows.append(res)
        print(f"{m}: " + json.dumps({k: round(v, 4) for k, v in res.items() if isinstance(v, float)}), flush=True)
    paths = report.write(rows, out)
    print(report.markdown_table(rows))
    print(f"\nwritten: {', '.join(str(p) for p in paths.values())}")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rainmerge.eval")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model", help="evaluate one model folder")
    m.add_argument("--model", required=True)
    m.add_argument("--data", required=True, help="folder with eval_*.jsonl")
    m.add_argument("--lrm", help="LRM folder, for L_think")
    m.add_argument("--calibration", help="instruction calibration file whose prompts are held out")
    m.add_argument("--out", help="write metrics JSON here")
    c = sub.add_parser("compare", help="merge with each method and evaluate all")
    c.add_argument("--config", default="configs/toy.yaml")
    c.add_argument("--out", default="runs/toy/compare")
    c.add_argument("--methods", default=_default_methods(), help="comma-separated: lrm, itm and merge methods")
    c.add_argument("--data", help="evaluation folder (default: next to the calibration files)")
    for p in (m, c):
        p.add_argument("--limit", type=int)
        p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
        p.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if a.cmd == "model":
        from .suite import evaluate_model

        res = evaluate_model(a.model, a.data, lrm_dir=a.lrm, calibration=a.calibration, device=a.device,
                             limit=a.limit, progress=not a.quiet)
        text = json.dumps(res, indent=2)
        if a.out:
            Path(a.out).write_text(text)
        print(text)
        return 0
    compare(a.config, Path(a.out), a.methods.split(","), Path(a.data) if a.data else None, a.limit, a.device,
            not a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
