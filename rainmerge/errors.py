"""Errors raised before heavy work starts. Each message says what is wrong and how to fix it."""


class RainMergeError(Exception):
    """Base class for every error rainmerge raises on purpose."""


class ConfigError(RainMergeError):
    """The configuration or an input (model, tokenizer, calibration file, output path) is invalid."""


class CalibrationError(RainMergeError):
    """Too many calibration records could not be located in the rendered text."""
