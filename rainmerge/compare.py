"""`rainmerge compare` (also `python -m rainmerge.eval compare`): merge a trio (the toy by default) with
each method and evaluate the LRM, the ITM and every merge on the same held-out prompts. It runs merges
and evaluations, so it sits above both the merge stages and the evaluation package."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _default_methods() -> str:
    from .methods import METHODS

    return ",".join(["lrm", "itm", *(m.name for m in METHODS.values() if m.compared_by_default)])


def compare(config: str, out: Path, methods: list[str], data: Path | None, limit: int | None, device: str,
            progress: bool, overrides: dict | None = None) -> list[dict]:
    from .config import load_config
    from .eval import comparison
    from .eval.suite import default_data_dir, evaluate_model, held_out_file

    base_cfg = load_config(config, overrides)
    data = Path(data or default_data_dir(base_cfg))
    if not (data / "eval_instructions.jsonl").is_file():
        raise SystemExit(f"evaluation data not found in {data}; pass --data DIR")
    cal = held_out_file(base_cfg)
    rows = []
    for m in methods:
        folder = model_folder(base_cfg, m, out / "models" / m, progress)
        res = evaluate_model(folder, data, lrm_dir=base_cfg.reasoning.path, calibration=cal, device=device,
                             limit=limit, progress=progress, name=m)
        res.pop("examples", None)
        rows.append(res)
        print(f"{m}: " + json.dumps({k: round(v, 4) for k, v in res.items() if isinstance(v, float)}), flush=True)
    paths = comparison.write(rows, out)
    print(comparison.markdown_table(rows))
    ivs = paired_vs_lrm(rows)
    if ivs:
        print("\npaired 95% intervals vs the LRM (model - LRM, prompts resampled in pairs, as the promotion gates):")
        for model, by_metric in ivs.items():
            print(f"  {model}: " + "; ".join(f"{k} {iv.text()}" for k, iv in by_metric.items()))
        ivs_path = out / "intervals_vs_lrm.json"
        ivs_path.write_text(json.dumps({m: {k: iv.as_dict() for k, iv in d.items()} for m, d in ivs.items()},
                                       indent=1))
        paths["intervals"] = ivs_path
    print(f"\nwritten: {', '.join(str(p) for p in paths.values())}")
    return rows


def model_folder(base_cfg, method: str, folder: Path, progress: bool = False) -> str:
    """The folder evaluated for `method`: the LRM's or the ITM's own, else `base_cfg` merged with it into `folder`."""
    from .config import load_config
    from .stages import run_merge

    if method in ("lrm", "itm"):
        return base_cfg.reasoning.path if method == "lrm" else base_cfg.instruct.path
    cfg = base_cfg.model_copy(update={"method": method, "output": str(folder), "overwrite": True})
    run_merge(load_config(None, cfg.model_dump(mode="json")), progress=progress)
    return str(folder)


INTERVAL_METRICS = ("if_inst_strict", "reasoning_acc", "malformed_rate", "truncation_rate")


def paired_vs_lrm(rows: list[dict]) -> dict[str, dict]:
    """Each model's paired bootstrap interval of (model - LRM) on the metrics the gates compare; empty without
    an LRM row. The gates' defaults: 95 %, 2,000 resamples, seed 0."""
    from .eval.stats import paired_bootstrap

    lrm = next((r for r in rows if r.get("model") == "lrm"), None)
    if lrm is None or "paired" not in lrm:
        return {}
    return {r["model"]: {m: paired_bootstrap(r["paired"][m], lrm["paired"][m])
                         for m in INTERVAL_METRICS if m in r.get("paired", {}) and m in lrm["paired"]}
            for r in rows if r is not lrm and "paired" in r}


def parser() -> argparse.ArgumentParser:
    c = argparse.ArgumentParser(prog="rainmerge compare", description="merge with each method and evaluate all")
    c.add_argument("--config", default="configs/toy.yaml")
    c.add_argument("--out", default="runs/toy/compare")
    c.add_argument("--methods", default=_default_methods(), help="comma-separated: lrm, itm and merge methods")
    c.add_argument("--data", help="evaluation folder (default: next to the calibration files)")
    c.add_argument("--limit", type=int)
    c.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    c.add_argument("--quiet", action="store_true")
    return c


def _methods(text: str) -> list[str]:
    """The --methods list, checked before any merge or evaluation starts."""
    from .errors import ConfigError
    from .methods import METHODS

    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in ("lrm", "itm", *METHODS)]
    if unknown or not names:
        raise ConfigError(f"--methods: unknown {', '.join(unknown) or '(empty list)'}; choose from lrm, itm, "
                          + ", ".join(METHODS))
    return names


def main(argv: list[str] | None = None) -> int:
    from .errors import RainMergeError
    from .redact import redact

    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        compare(a.config, Path(a.out), _methods(a.methods), Path(a.data) if a.data else None, a.limit,
                a.device, not a.quiet)
    except RainMergeError as exc:  # a bad config or flag: one line, as every other command
        print(f"rainmerge: error: {redact(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
