"""One console for rainmerge: each line once, above any progress bar, third-party noise filtered here."""

from __future__ import annotations

import logging
import sys
import warnings

# warnings from libraries that tell the user nothing actionable about their merge
_QUIET_WARNINGS = (
    r"The specified dataset source can be interpreted in multiple ways",  # mlflow: our datasets are files
    r".*`torch_dtype` is deprecated.*",
    r".*TRANSFORMERS_CACHE.*",
)
# loggers whose INFO chatter buries ours; their warnings still show
_QUIET_LOGGERS = ("mlflow", "alembic", "httpx", "urllib3", "huggingface_hub", "filelock",
                  "ContinuousBatchingLogger")  # transformers: its own handler, INFO per generate_batch
# lines of the orchestrator's console that advertise rather than inform (ZenML Pro upsell)
_UPSELL = ("ZenML Pro", "zenml.io/pro", "In order to try it locally, please run")


class _DropUpsell(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(u in msg for u in _UPSELL)


class _Redact(logging.Filter):
    """Credentials in URIs never reach the console or a log store (`http://alice:***@host`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from .redact import redact

        try:
            msg = record.getMessage()
        except Exception:  # a malformed record is the handler's to report
            return True
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


class _ConsoleHandler(logging.Handler):
    """Writes through tqdm, so a line never lands inside a progress bar; resolves sys.stderr at each
    write, so an orchestrator capturing a step's stderr (ZenML) captures these lines too."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # never let logging break a merge
            self.handleError(record)


def setup(level: int = logging.INFO) -> logging.Logger:
    """Idempotent: the `rainmerge` logger prints once, through its own handler (not the root's, which
    ZenML and basicConfig also print through: that was every line twice)."""
    log = logging.getLogger("rainmerge")
    if not any(isinstance(h, _ConsoleHandler) for h in log.handlers):
        h = _ConsoleHandler()
        h.setFormatter(logging.Formatter("%(levelname)s rainmerge: %(message)s"))
        h.addFilter(_Redact())
        log.addHandler(h)
    log.setLevel(level)
    log.propagate = False
    quiet_third_party()
    return log


def quiet_third_party() -> None:
    """Call again after importing ZenML or MLflow: both (re)configure their loggers on import."""
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("", "zenml", "mlflow"):
        for h in logging.getLogger(name).handlers:
            for kind in (_DropUpsell, _Redact):
                if not any(isinstance(f, kind) for f in h.filters):
                    h.addFilter(kind())
