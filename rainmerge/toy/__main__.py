"""python -m rainmerge.toy build --out DIR"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m rainmerge.toy")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train the toy trio (deterministic, CPU)")
    b.add_argument("--out", required=True)
    b.add_argument("--overwrite", action="store_true")
    b.add_argument("--seed", type=int, default=0, help="training seed (initialisation, data order)")
    b.add_argument("--data-seed", type=int, default=0, help="prompt sets (held-out, calibration, training)")
    b.add_argument("--recipe", choices=["v1", "v2"], default="v1",
                   help="v1: the committed trio; v2: the issue-15 recipe (docs/toy-v2.md)")
    b.add_argument("--lrm-if-share", type=float, default=None,
                   help="override the recipe's share of think-mode LRM examples that obey formats (v2: 0.10; "
                        "docs/toy-v2.md measures 0, 0.02, 0.05)")
    b.add_argument("--quiet", action="store_true")
    h = sub.add_parser("heldout", help="write N more held-out instruction prompts for a built trio "
                       "(data/eval_instructions_extra.jsonl; none seen by its build)")
    h.add_argument("--toy", default="assets/toy", help="the built trio's folder (reads its manifest.json)")
    h.add_argument("--n", type=int, default=1800)
    h.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.cmd == "heldout":
        from .build import write_extra_held_out

        print(write_extra_held_out(a.toy, a.n, a.seed))
        return
    import torch

    from .build import ToySpec, build

    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    over = {} if a.lrm_if_share is None else {"lrm_if_share": a.lrm_if_share}
    if over and not 0.0 <= a.lrm_if_share <= 1.0:
        ap.error(f"--lrm-if-share must be in [0, 1], got {a.lrm_if_share}")
    spec = (ToySpec.v2 if a.recipe == "v2" else ToySpec)(seed=a.seed, data_seed=a.data_seed, **over)
    build(a.out, spec, progress=not a.quiet, overwrite=a.overwrite)


if __name__ == "__main__":
    main()
