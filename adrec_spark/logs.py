"""Logging set-up for jobs (library code only calls ``logging.getLogger(__name__)``)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_adrec", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        handler._adrec = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("py4j", "urllib3", "alembic", "mlflow.store", "filelock", "httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def timed(log: logging.Logger, what: str) -> Iterator[dict[str, float]]:
    """Log how long ``what`` took; the dict gets ``seconds`` when the block ends."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    log.info("%s ...", what)
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - start
        log.info("%s done in %.1fs", what, out["seconds"])
