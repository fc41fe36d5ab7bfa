"""Stopping a job cleanly when the process is told to stop.

A nightly job is stopped from outside more often than it fails: a scheduler's task timeout, a node taken
back, someone's ``kill``. Those send SIGTERM first (SIGKILL follows after a grace period, 30 s by default on
Kubernetes). While :func:`terminate_as_error` is active, the first SIGTERM raises :class:`JobTerminated` in
the main thread, so the tables a run already replaced are put back (:func:`adrec_spark.io.tables.partition_unit`)
just as after an error; later ones are logged and ignored so that the rollback can finish. Ctrl-C (SIGINT)
is PySpark's own handler: it raises ``KeyboardInterrupt`` at once (its own attempt to cancel the Spark jobs
fails when it lands in the middle of a Py4J call), and the unit cancels them and rolls back on it too.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

from adrec_spark.errors import JobTerminated

log = logging.getLogger(__name__)

SETTLE_S = 5.0  # after a stop, how long jobs that the interrupted call submits late are still cancelled
SETTLE_POLL_S = 0.25


@contextlib.contextmanager
def terminate_as_error(signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """While the block runs, the first of ``signals`` cancels the running Spark jobs (:func:`stop_spark_work`)
    and raises :class:`JobTerminated` in the main thread (where Python runs signal handlers, even while it
    waits on a Spark job); the handlers before are put back after. Outside the main thread this does nothing."""
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if received:
            log.warning("%s again: still putting back the tables of this run; SIGKILL ends it as it is", name)
            return
        received.append(signum)
        log.warning("%s: stopping the job; the tables it already wrote are put back", name)
        stop_spark_work()
        raise JobTerminated(signum)

    with _handlers(dict.fromkeys(signals, handler)):
        yield


@contextlib.contextmanager
def children_ignore_sigterm() -> Iterator[None]:
    """Processes started inside the block (PySpark's JVM) inherit SIGTERM ignored, and HotSpot installs no
    SIGTERM handler of its own where SIGTERM is ignored at its start: a SIGTERM to the whole process group
    (Airflow's timeout, systemd) then stops the job through the driver's handler instead of shutting the JVM
    down under it, and the JVM still exits with the driver (whose end closes the JVM's standard input). The
    JVM's Python workers set their own handlers. This process ignores SIGTERM meanwhile too: one that
    arrives while the JVM starts (seconds, before anything is read or written) is lost, and the scheduler's
    SIGKILL ends such a job. Outside the main thread, a no-op."""
    with _handlers({signal.SIGTERM: signal.SIG_IGN}):
        yield


@contextlib.contextmanager
def _handlers(handlers: dict[signal.Signals, object]) -> Iterator[None]:
    """``handlers`` installed while the block runs, the ones before put back after; only the main thread can
    set signal handlers, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, h) for s, h in handlers.items()}  # type: ignore[arg-type]
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_spark_work(*, settle_s: float = 0.0) -> None:
    """Cancel the running Spark jobs of this driver and drop the main thread's Py4J connection (no-op without
    an active SparkContext).

    A stop can land while the main thread waits on a Py4J call: that call's answer is still on its way on
    that connection, and PySpark's own cleanup on the way out (``SCCallSiteSync``) would send its next command
    there and read the stale answer, waiting for the very job being stopped. Closing it makes the next call
    open a fresh connection. The interrupted call may still be planning its job in the JVM and submit it a
    moment later, so for ``settle_s`` seconds any job that appears is cancelled too (before a rollback: no
    job of the stopped run may commit after it)."""
    if "pyspark" not in sys.modules:
        return
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    if sc is None:
        return
    try:
        client = sc._gateway._gateway_client  # type: ignore[union-attr]
        connection = client.get_thread_connection() if hasattr(client, "get_thread_connection") else None
        if connection is not None:
            connection.close()
        sc.cancelAllJobs()
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            time.sleep(SETTLE_POLL_S)
            if sc.statusTracker().getActiveJobsIds():
                log.warning("cancelling a Spark job submitted by the interrupted call")
                sc.cancelAllJobs()
    except Exception:
        log.exception("could not cancel the running Spark jobs")
