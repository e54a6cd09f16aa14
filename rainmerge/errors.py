"""Errors raised before heavy work starts. Each message says what is wrong and how to fix it."""


class RainMergeError(Exception):
    """Base class for every error rainmerge raises on purpose."""


class ConfigError(RainMergeError):
    """The configuration or an input (model, tokenizer, calibration file, output path) is invalid."""


class CalibrationError(RainMergeError):
    """Too many calibration records could not be located in the rendered text."""


class OutputLockedError(ConfigError):
    """Another rainmerge process is writing the same output folder."""


class CorruptInputError(ConfigError):
    """An input file (weights shard, index, config.json) cannot be read or parsed."""


class NonFiniteError(ConfigError):
    """An input tensor holds NaN or Inf values."""


class DiskSpaceError(ConfigError):
    """The output's filesystem is too small (or became full) for the merged model."""


class TrackingStoreError(RainMergeError):
    """The MLflow tracking store cannot be reached or written (server down, read-only store)."""
