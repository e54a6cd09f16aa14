"""python -m rainmerge.toy build --out DIR: with no recipe flags, the shipped trio's recipe (assets/toy)."""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# the recipe of the shipped trio in assets/toy (its manifest.json `spec`): the bare rebuild command reproduces it.
# Seed 0 is shipped by a rule fixed before any merge result of this generator existed (docs/toy-v3.md).
SHIPPED = {"recipe": "v2", "seed": 0, "data_seed": 0, "lrm_if_share": 0.02}
RECIPES = ("v1", "v2", "gentle", "long-lrm")  # v1: ToySpec(); the others: the ToySpec classmethod of that name


def _count(minimum: int):
    """An argparse type: an int >= minimum, so `--n 0` is an error rather than silently the default."""
    def parse(text: str) -> int:
        n = int(text)
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {n}")
        return n
    return parse


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rainmerge.toy")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train the toy trio (deterministic, CPU); the defaults rebuild the shipped "
                       "trio in assets/toy")
    b.add_argument("--out", required=True)
    b.add_argument("--overwrite", action="store_true",
                   help="replace an earlier toy build at --out (one whose manifest.json lists its files)")
    b.add_argument("--seed", type=int, default=SHIPPED["seed"],
                   help="training seed (initialisation, data order); default %(default)s, the shipped trio's")
    b.add_argument("--data-seed", type=int, default=SHIPPED["data_seed"],
                   help="prompt sets (held-out, calibration, training); default %(default)s")
    b.add_argument("--recipe", choices=sorted(RECIPES), default=SHIPPED["recipe"],
                   help="the recipe: v1 (the first), v2 (docs/toy-v2.md), gentle (v2 with a longer base and "
                        "fine-tunes at half the learning rate; tried, not shipped: docs/toy-v3.md), long-lrm (v2 with "
                        "the LRM fine-tuned 3x longer: docs/toy-v3.md v3.2); default %(default)s, the shipped trio's")
    b.add_argument("--lrm-if-share", type=float, default=None,
                   help="share of think-mode LRM examples that obey formats; default: %s with v2 (the shipped "
                        "trio), the recipe's own with v1 (0); docs/toy-v2.md measures 0, 0.02, 0.05"
                        % SHIPPED["lrm_if_share"])
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--threads", type=int, default=max(1, min(os.cpu_count() or 1, 8)),
                   help="torch CPU threads (default %(default)s); on a shared machine 1 per concurrent build")
    h = sub.add_parser("heldout", help="write N more held-out instruction prompts for a built trio "
                       "(data/eval_instructions_extra.jsonl; held-out phrasings and topics only, no prompt of its build)")
    h.add_argument("--toy", default="assets/toy", help="the built trio's folder (reads its manifest.json)")
    h.add_argument("--n", type=_count(1), default=600)
    h.add_argument("--problems", type=_count(0), default=0, help="also write this many held-out sums "
                   "(data/eval_problems_extra.jsonl: none a prompt of the build or of its default dev set)")
    h.add_argument("--seed", type=int, default=1)
    d = sub.add_parser("devset", help="write a development set for choosing merge settings (strength, stage 1/2) "
                       "without touching the held-out sets: calibration-part phrasings and topics, no prompt of the build")
    d.add_argument("--toy", default="assets/toy", help="the built trio's folder (reads its manifest.json)")
    d.add_argument("--out", required=True, help="folder for eval_instructions.jsonl and eval_problems.jsonl "
                   "(pass it to `rainmerge compare --data`)")
    d.add_argument("--n", type=_count(1), default=None, help="instruction prompts (default 300)")
    d.add_argument("--problems", type=_count(1), default=None, help="sums (default 100)")
    return ap


def spec_from_args(a: argparse.Namespace):
    from .build import ToySpec

    share = a.lrm_if_share
    if share is None and a.recipe == SHIPPED["recipe"]:
        share = SHIPPED["lrm_if_share"]
    over = {} if share is None else {"lrm_if_share": share}
    if over and not 0.0 <= share <= 1.0:
        raise ValueError(f"--lrm-if-share must be in [0, 1], got {share}")
    make = ToySpec if a.recipe == "v1" else getattr(ToySpec, a.recipe.replace("-", "_"))
    return make(seed=a.seed, data_seed=a.data_seed, **over)


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    a = ap.parse_args(argv)
    if a.cmd == "heldout":
        from .build import write_extra_held_out

        print(write_extra_held_out(a.toy, a.n, a.seed, a.problems))
        return
    if a.cmd == "devset":
        from .build import DEV_SIZES, write_dev_set

        print(write_dev_set(a.toy, a.out, a.n or DEV_SIZES[0], a.problems or DEV_SIZES[1]))
        return
    import torch

    from .build import build

    torch.set_num_threads(max(1, a.threads))
    try:
        spec = spec_from_args(a)
    except ValueError as exc:
        ap.error(str(exc))
    build(a.out, spec, progress=not a.quiet, overwrite=a.overwrite)


if __name__ == "__main__":
    main()
