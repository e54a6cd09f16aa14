from .rain_merge import baseline_merge_pipeline, rain_merge_pipeline

__all__ = ["baseline_merge_pipeline", "rain_merge_pipeline"]
