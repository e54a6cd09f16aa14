"""The promotion decision: one function, `decide`, used by the pipeline's promote step, by
`rainmerge promote` and by the strength sweep's selection.

Every gate compares the merged model with the LRM evaluated under the same settings on the same
prompts, paired by prompt, through a confidence interval of the difference (rainmerge.eval.stats):

- IF gain: the interval's lower bound lies above `min_gain_over_lrm` (strictly: a gain must be shown, so a
  merge identical to the LRM, whose interval is [0, 0], never passes a margin of 0);
- reasoning: the lower bound is not below -`max_reasoning_drop`;
- truncation / malformed rates: the upper bound of the increase is within `max_truncation_increase` /
  `max_malformed_increase`;
- optional absolute floors, and the champion (point values: the champion's records are not paired here).

Comparisons carry a documented tolerance, TOL = 1e-9: a value within TOL of its bar counts as equal to
it, so binary noise such as 0.6 - 0.55 = 0.04999999999999993 or 0.55 + 0.05 = 0.6000000000000001 never
flips a verdict (metrics are ratios of counts; two distinct ratios with denominators below ~30,000 differ by
far more than TOL). Tie rule: a value that reaches its bar exactly passes (>=, <=) every gate
(reasoning, truncation, malformed, floors, and a tie with the champion) except the IF gain, which
asks for evidence and so needs its lower bound strictly above the margin. Intervals come from the per-prompt `paired` units when both
evaluations carry them, else from the `ci.<metric>.*` values stored with the merged metrics (what
`rainmerge promote` reads back from the registry); the bootstrap is seeded, so both give the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import RainMergeError
from ..eval.scoring import KNOWN_METRICS
from ..eval.stats import Interval, paired_bootstrap

if TYPE_CHECKING:
    from .pipeline_config import PromotionGates

@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    version: str | None = None
    previous_champion: str | None = None
    model: str | None = None
    gates_decision: str | None = None
    forced: bool = False
    operator: str | None = None
    reason: str | None = None
    time: str | None = None
    linked: bool = False  # a re-run that found this version already registered (same weights and inputs)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


CI_FIELDS = ("delta", "lo", "hi", "n", "level", "candidate", "reference")


class GateError(RainMergeError):
    """The gates cannot be applied (a metric missing or not a number, a champion without metrics)."""


TOL = 1e-9


def reaches(value: float, bar: float) -> bool:
    """value >= bar, equality within TOL (the tie rule: reaching the bar passes)."""
    return value >= bar - TOL


def exceeds(value: float, bar: float) -> bool:
    """value > bar beyond TOL (the IF gain must be shown, a tie is not a gain)."""
    return value > bar + TOL


def number(metrics: dict[str, Any], key: str, who: str) -> float:
    """metrics[key] as a finite float, or one clear error naming who lacks it."""
    if key not in metrics or metrics[key] is None:
        has = ", ".join(sorted(k for k in metrics if k in KNOWN_METRICS)) or "none"
        raise GateError(f"{who} has no metric '{key}' (has: {has}); re-evaluate it or fix the stored metrics")
    v = metrics[key]
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise GateError(f"{who}'s metric '{key}' is not a number: {str(v)[:60]!r}") from None
    if not math.isfinite(f):
        raise GateError(f"{who}'s metric '{key}' is not finite: {f}")
    return f


def gate_metrics(gates: PromotionGates) -> list[str]:
    """The metrics the interval gates compare, the configured IF metric first."""
    return list(dict.fromkeys([gates.metric, "reasoning_acc", "truncation_rate", "malformed_rate"]))


def interval(merged: dict[str, Any], lrm: dict[str, Any], metric: str, gates: PromotionGates) -> Interval:
    """The paired interval of merged - LRM for `metric`: from per-prompt units, else the stored ci.* values."""
    pm, pl = (merged.get("paired") or {}).get(metric), (lrm.get("paired") or {}).get(metric)
    if pm is not None and pl is not None:
        try:
            return paired_bootstrap(pm, pl, level=gates.confidence, n_resamples=gates.bootstrap_resamples,
                                    seed=gates.seed)
        except ValueError as exc:
            raise GateError(f"{metric}: {exc}") from None
    stored = {f: merged.get(f"ci.{metric}.{f}") for f in CI_FIELDS}
    if any(v is None for v in stored.values()):
        raise GateError(f"no paired records for '{metric}' (neither per-prompt units nor stored ci.{metric}.* "
                        "values): evaluate the merged model and the LRM with this version of rainmerge")
    vals = {f: number(stored, f, f"the stored interval of {metric}") for f in CI_FIELDS}
    if abs(vals["level"] - gates.confidence) > TOL:
        raise GateError(f"the stored interval of {metric} is at level {vals['level']}, the gates ask "
                        f"{gates.confidence}: re-run the pipeline's promote step to recompute it")
    return Interval(vals["delta"], vals["lo"], vals["hi"], int(vals["n"]), vals["level"], vals["candidate"],
                    vals["reference"])


def intervals(merged: dict[str, Any], lrm: dict[str, Any], gates: PromotionGates) -> dict[str, Interval]:
    return {m: interval(merged, lrm, m, gates) for m in gate_metrics(gates)}


def flat(ivs: dict[str, Interval]) -> dict[str, float]:
    """Intervals as plain metrics, ci.<metric>.<field>: stored with the version, read back by `promote`."""
    return {f"ci.{m}.{f}": float(getattr(iv, f)) for m, iv in ivs.items() for f in CI_FIELDS}


def decide(merged: dict[str, Any], lrm: dict[str, Any], champion: dict[str, Any] | None, gates: PromotionGates,
           champion_version: str | None = None) -> Decision:
    """Apply every gate; each reason says PASS/FAIL with the interval or numbers it used.

    `champion_version` set with `champion` None or without the metric is an error (a champion whose
    metrics are missing must be resolved, never taken for "no champion")."""
    d = Decision(True)

    def check(ok: bool, text: str) -> None:
        d.reasons.append(("PASS " if ok else "FAIL ") + text)
        d.promote &= ok

    ivs = intervals(merged, lrm, gates)
    m, gain = gates.metric, ivs[gates.metric]
    check(exceeds(gain.lo, gates.min_gain_over_lrm),
          f"{m} gain over LRM {gain.text()}: lower bound {gain.lo:+.4f} > {gates.min_gain_over_lrm}")
    r = ivs["reasoning_acc"]
    check(reaches(r.lo, -gates.max_reasoning_drop),
          f"reasoning_acc change {r.text()}: lower bound {r.lo:+.4f} >= -{gates.max_reasoning_drop}")
    for key, margin in (("truncation_rate", gates.max_truncation_increase),
                        ("malformed_rate", gates.max_malformed_increase)):
        iv = ivs[key]
        check(reaches(margin, iv.hi), f"{key} increase {iv.text()}: upper bound {iv.hi:+.4f} <= {margin}")
    for key, floor in sorted(gates.floors.items()):
        v = number(merged, key, "the merged model")
        check(reaches(v, floor), f"{key} {v!r} >= floor {floor!r}")
    if gates.require_beats_champion:
        if champion_version is None and champion is None:
            d.reasons.append("PASS no current champion")
        else:
            who = f"champion v{champion_version}" if champion_version else "champion"
            c = number(champion or {}, m, who)
            v = number(merged, m, "the merged model")
            check(reaches(v, c), f"{m} {v!r} >= {who} {c!r} (a tie passes)")
    return d
