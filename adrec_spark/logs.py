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


class Stopwatch:
    """Wall time since it was made, and of named stages within it: the one timer of the jobs.

    ``with watch.stage("score"): ...`` adds the block's seconds to ``watch.stages["score"]``; ``with
    watch.stage("vacuum", log=log, what="orders")`` also logs ``orders done in 1.2s``."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, *, log: logging.Logger | None = None, what: str = "") -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.stages[name] = self.stages.get(name, 0.0) + seconds
            if log is not None:
                log.info("%s done in %.1fs", what or name, seconds)

    def elapsed(self) -> float:
        """Seconds since the stopwatch was made."""
        return time.perf_counter() - self.started

    def rounded(self) -> dict[str, float]:
        """The stages' seconds to one decimal, for a log line."""
        return {k: round(v, 1) for k, v in self.stages.items()}
