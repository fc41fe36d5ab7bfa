"""Progress lines for long Spark work, logged on the driver while it waits.

``with progress(spark, "scoring", total=n, unit="pairs", counter=acc):`` starts a daemon thread that logs, every
``every_s`` seconds and only while the block runs::

    scoring: 12,345/40,000 pairs (30.9%), 95.1 pairs/s, ETA 4m29s, elapsed 2m10s

``counter`` is a Spark accumulator the tasks add their units to (the scoring UDF adds each Arrow batch's pairs).
Spark merges a task's accumulator updates into the driver's value when the task ends, so the count moves one
finished task at a time. Without a counter the line counts the tasks of the running Spark stages, from
``SparkContext.statusTracker()``::

    etl [write events_clean]: 3/8 tasks of 1 running stage (37.5%), 0.10 tasks/s, ETA 50s, elapsed 1m00s

A block that ends within ``every_s`` logs nothing; one that logged a line ends with a closing line (how many,
in how long). ``every_s <= 0`` turns it off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


class _HasValue(Protocol):
    @property
    def value(self) -> Any: ...


def format_duration(seconds: float) -> str:
    """``4m50s``, ``1h02m``, ``35s``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def stage_tasks(spark: SparkSession) -> dict[int, tuple[int, int]]:
    """(completed, total) tasks of each running stage, from the status tracker (no Spark job)."""
    tracker = spark.sparkContext.statusTracker()
    out = {}
    for stage_id in tracker.getActiveStageIds():
        info = tracker.getStageInfo(stage_id)
        if info is not None:
            out[stage_id] = (info.numCompletedTasks, info.numTasks)
    return out


class Progress:
    """What a progress line says: done of total, rate and ETA since ``start``. Either ``done`` (a count of
    units) or ``tasks`` (the running stages' tasks, see :func:`stage_tasks`) feeds it."""

    def __init__(self, what: str, *, unit: str = "pairs", total: int | Callable[[], int | None] | None = None,
                 done: Callable[[], float] | None = None,
                 tasks: Callable[[], dict[int, tuple[int, int]]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if (done is None) == (tasks is None):
            raise ValueError("Progress needs exactly one of done= or tasks=")
        self.what, self.unit, self._total, self._done, self._tasks, self._clock = what, unit, total, done, tasks, clock
        self.start = clock()
        self.step = ""  # an optional label for the current part of the work (set by the caller)
        self._seen: dict[int, tuple[float, int]] = {}  # stage -> (first seen at, tasks completed then)

    def total(self) -> int | None:
        value = self._total() if callable(self._total) else self._total
        return int(value) if value else None

    def set_total(self, total: int | Callable[[], int | None] | None) -> None:
        """The planned number of units, once the caller knows it."""
        self._total = total

    def _head(self) -> str:
        return f"{self.what} [{self.step}]" if self.step else self.what

    def line(self) -> str:
        now = self._clock()
        elapsed = now - self.start
        if self._done is not None:
            return self._count_line(int(self._done()), self.total(), elapsed)
        return self._task_line(now, elapsed)

    def _count_line(self, done: int, total: int | None, elapsed: float) -> str:
        parts = [f"{done:,}/{total:,} {self.unit} ({100.0 * done / total:.1f}%)" if total else f"{done:,} {self.unit}"]
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:,.1f} {self.unit}/s")
            if total and total > done:
                parts.append(f"ETA {format_duration((total - done) / rate)}")
        else:
            parts.append("no task finished yet")
        parts.append(f"elapsed {format_duration(elapsed)}")
        return f"{self._head()}: {', '.join(parts)}"

    def _task_line(self, now: float, elapsed: float) -> str:
        stages = self._tasks() if self._tasks is not None else {}
        if not stages:
            return f"{self._head()}: no Spark stage running, elapsed {format_duration(elapsed)}"
        done = sum(c for c, _ in stages.values())
        total = sum(n for _, n in stages.values())
        rate_done, rate_time = 0, 0.0  # tasks finished since each stage was first seen, and for how long
        for stage, (completed, _) in stages.items():
            first_at, first_done = self._seen.setdefault(stage, (now, completed))
            rate_done += completed - first_done
            rate_time = max(rate_time, now - first_at)
        n = len(stages)
        parts = [f"{done:,}/{total:,} tasks of {n} running stage{'s' if n > 1 else ''}"
                 f" ({100.0 * done / max(total, 1):.1f}%)"]
        if rate_done > 0 and rate_time > 0:
            rate = rate_done / rate_time
            parts += [f"{rate:,.2f} tasks/s", f"ETA {format_duration((total - done) / rate)}"]
        parts.append(f"elapsed {format_duration(elapsed)}")
        return f"{self._head()}: {', '.join(parts)}"

    def summary(self, *, finished: bool = True) -> str:
        """The closing line: how many units (or how long) in how long; ``finished=False``: it stopped early."""
        elapsed = self._clock() - self.start
        if not finished:
            return f"{self.what}: stopped after {format_duration(elapsed)}"
        if self._done is None:
            return f"{self.what}: done in {format_duration(elapsed)}"
        done = int(self._done())
        return (f"{self.what}: {done:,} {self.unit} in {format_duration(elapsed)} "
                f"({done / max(elapsed, 1e-9):,.1f} {self.unit}/s)")


class _Reporter:
    """Logs ``progress.line()`` every ``every_s`` seconds from a daemon thread until stopped."""

    def __init__(self, progress: Progress, every_s: float, logger: logging.Logger) -> None:
        self.progress, self.every_s, self.log = progress, every_s, logger
        self.lines = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"adrec-progress-{progress.what}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.log.info("%s", self.progress.line())
                self.lines += 1
            except Exception as e:  # a stopped SparkContext, say: progress never fails the job
                self.log.debug("progress line failed: %s", e)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextmanager
def progress(spark: SparkSession, what: str, *, total: int | Callable[[], int | None] | None = None,
             unit: str = "pairs", every_s: float = 30.0, counter: _HasValue | None = None,
             logger: logging.Logger | None = None) -> Iterator[Progress]:
    """Log progress lines for the block every ``every_s`` seconds (see the module's docstring).

    Args:
        spark: the session whose status tracker counts tasks when there is no ``counter``.
        what: the name the lines start with (``scoring``, ``etl``, ``evaluation``).
        total: the planned number of units, or a callable returning it (None or 0: unknown yet).
        unit: what ``counter`` counts.
        every_s: seconds between lines; <= 0 logs nothing.
        counter: a Spark accumulator (anything with ``.value``) the tasks add units to.
        logger: where the lines go (this module's logger by default).
    """
    logger = logger or log
    state = Progress(what, unit=unit, total=total,
                     done=(lambda: counter.value) if counter is not None else None,
                     tasks=None if counter is not None else (lambda: stage_tasks(spark)))
    if every_s <= 0:
        yield state
        return
    reporter = _Reporter(state, every_s, logger)
    reporter.start()
    finished = False
    try:
        yield state
        finished = True
    finally:
        reporter.stop()
        if reporter.lines:
            try:
                logger.info("%s", state.summary(finished=finished))
            except Exception as e:
                logger.debug("progress summary failed: %s", e)
