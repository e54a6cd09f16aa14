"""rainmerge: RAIN-Merging (arXiv 2602.22538) of an instruction model into a reasoning model."""

__version__ = "0.1.0"
