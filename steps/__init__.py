"""ZenML steps: one per file, each a one-line wrapper over rainmerge.product.step_bodies.STEPS."""

from .build_calibration_sets import build_calibration_sets
from .collect_features import collect_features
from .compute_projectors import compute_projectors
from .evaluate import evaluate
from .load_models import load_models
from .merge import merge
from .promote import promote
from .push_to_hub import push_to_hub
from .score_attention_heads import score_attention_heads
from .select_candidate import select_candidate

__all__ = ["build_calibration_sets", "collect_features", "compute_projectors", "evaluate", "load_models", "merge",
           "promote", "push_to_hub", "score_attention_heads", "select_candidate"]
