"""Delta table I/O: the only module that reads or writes lakehouse tables.

Nightly tables are replaced one date partition at a time with ``replaceWhere``: one atomic Delta commit,
so a rerun leaves the same rows, a failed run leaves the previous ones, and runs for other dates are
untouched. A job that writes several tables does so in a :func:`partition_unit`, which puts back the
partitions it already replaced when it fails with an error (unless another writer changed them since).
Commit conflicts with concurrent writers are retried a bounded number of times.

On the local file system every commit to a table is also serialised across processes by an OS file lock
(:func:`commit_lock`): Delta's log store there checks that a version is free and then renames its commit file
into place, and Hadoop's local rename replaces an existing file, so two processes could both take the same
version. Object stores rely on Delta's log store for that (S3: the DynamoDB log store, see conf/cluster.yaml).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar
from urllib.parse import urlparse

from delta.exceptions import (
    ConcurrentAppendException,
    ConcurrentDeleteDeleteException,
    ConcurrentDeleteReadException,
    ConcurrentTransactionException,
    ConcurrentWriteException,
    DeltaConcurrentModificationException,
    MetadataChangedException,
    ProtocolChangedException,
)
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from adrec_spark import termination
from adrec_spark.config import StorageConfig
from adrec_spark.errors import InputDataError, JobTerminated, WriteConflictError

log = logging.getLogger(__name__)

T = TypeVar("T")

_CONFLICTS = (
    DeltaConcurrentModificationException, ConcurrentWriteException, MetadataChangedException,
    ProtocolChangedException, ConcurrentAppendException, ConcurrentDeleteReadException,
    ConcurrentDeleteDeleteException, ConcurrentTransactionException,
)
# Two first writers racing to create a table: the loser sees the log entry 0 already written.
_CONFLICT_MARKERS = ("FileAlreadyExistsException", "DELTA_CONCURRENT", "ConcurrentModification",
                     "DELTA_PROTOCOL_CHANGED", "DELTA_METADATA_CHANGED")


def is_delta_table(spark: SparkSession, path: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path)


def read_table(spark: SparkSession, storage: StorageConfig, table: str, *,
               version: int | None = None) -> DataFrame:
    """Read a Delta table (optionally at a pinned version); a clear error if it is not there."""
    path = storage.table_path(table)
    if not is_delta_table(spark, path):
        raise InputDataError(f"table '{table}' not found at {path}: run the job that writes it first")
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(path)


# How far back a failed unit looks for its own commit (more commits since then are other writers').
HISTORY_LIMIT = 50

_COMMIT_FILE = re.compile(r"\d{20}\.json")


def table_version(spark: SparkSession, storage: StorageConfig, table: str) -> int | None:
    """The latest committed version, or None if the table does not exist.

    Read from the names of the commit files in ``_delta_log`` (one listing through the Hadoop file system,
    milliseconds) rather than ``DESCRIBE HISTORY`` (a Spark job, ~0.3-1 s); a log without plain commit files
    (an unusual layout) falls back to the history."""
    path = storage.table_path(table)
    log_dir = spark._jvm.org.apache.hadoop.fs.Path(path.rstrip("/") + "/_delta_log")  # type: ignore[union-attr]
    fs = log_dir.getFileSystem(spark._jsc.hadoopConfiguration())  # type: ignore[union-attr]
    if not fs.exists(log_dir):
        return None
    versions = [int(name[:20]) for name in (st.getPath().getName() for st in fs.listStatus(log_dir))
                if _COMMIT_FILE.fullmatch(name)]
    if versions:
        return max(versions)
    if not is_delta_table(spark, path):
        return None
    row = DeltaTable.forPath(spark, path).history(1).select("version").first()
    return None if row is None else int(row[0])


# The commit lock of a table on the local file system: a hidden file in the table's folder. Delta skips names
# that start with '.' or '_' (outside partition folders) when it lists a table, so VACUUM leaves it there.
COMMIT_LOCK_FILE = ".adrec-commit.lock"

_held_locks = threading.local()  # the lock files this thread holds (a nested commit_lock does not wait on itself)


def local_table_dir(spark: SparkSession, path: str) -> str | None:
    """The local folder of the table at ``path`` when it is on the local file system (a plain path, resolved
    against Hadoop's default file system, or a ``file:`` URI); None for any other storage."""
    scheme = urlparse(path).scheme
    if scheme and scheme != "file":
        return None
    hpath = spark._jvm.org.apache.hadoop.fs.Path(path)  # type: ignore[union-attr]
    fs = hpath.getFileSystem(spark._jsc.hadoopConfiguration())  # type: ignore[union-attr]
    if fs.getUri().getScheme() != "file":  # a plain path on a cluster whose default file system is HDFS
        return None
    return str(fs.makeQualified(hpath).toUri().getPath())


@contextlib.contextmanager
def file_lock(lock_file: str, *, what: str = "") -> Iterator[None]:
    """Hold an exclusive OS lock (``flock``) on ``lock_file`` (created if missing) for the block: one holder at
    a time across processes and across threads; reentrant within a thread. The kernel releases it when the
    holder dies, so a killed job never leaves it taken."""
    key = os.path.abspath(lock_file)
    held: set[str] = _held_locks.__dict__.setdefault("paths", set())
    if key in held:
        yield
        return
    os.makedirs(os.path.dirname(key), exist_ok=True)
    fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: waiting for another writer's commit (lock %s)", what or key, key)
            t0 = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)  # a SIGTERM handler's exception still ends the wait
            log.info("%s: commit lock taken after %.1fs", what or key, time.monotonic() - t0)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def commit_lock(spark: SparkSession, path: str, *, what: str = "") -> Iterator[None]:
    """Serialise the commits to the Delta table at ``path`` across processes while the block runs, when the
    table is on the local file system (see the module's docstring); a no-op on any other storage."""
    local = local_table_dir(spark, path)
    if local is None:
        yield
        return
    with file_lock(os.path.join(local, COMMIT_LOCK_FILE), what=what or path):
        yield


def _is_conflict(e: Exception) -> bool:
    return isinstance(e, _CONFLICTS) or any(m in str(e) for m in _CONFLICT_MARKERS)


def _sql_literal(value: object) -> str:
    if isinstance(value, (dt.date, dt.datetime)):
        value = value.isoformat()
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def partition_predicate(column: str, values: Sequence[object]) -> str:
    """``ds IN ('2024-01-01', '2024-01-02')``: the replaceWhere predicate for those partitions."""
    if not values:
        raise ValueError("partition_predicate needs at least one value")
    return f"{column} IN ({', '.join(_sql_literal(v) for v in values)})"


def write_partitions(df: DataFrame, storage: StorageConfig, table: str, *, partition_col: str,
                     values: Sequence[object], description: str = "", merge_schema: bool = False) -> None:
    """Atomically replace the partitions ``partition_col IN values`` of ``table`` with ``df``.

    ``merge_schema``: a column of ``df`` the table lacks is added to it (a table written before that column
    existed); otherwise Delta refuses the write.

    Every row of ``df`` must fall in those partitions (Delta checks it). Conflicting commits by concurrent
    writers are retried with jittered back-off, ``storage.write_retries`` times at most. On the local file
    system the write holds the table's :func:`commit_lock` (so the Spark job that computes ``df`` runs under
    it too: writers of one table take turns there).
    """
    if partition_col not in df.columns:
        raise ValueError(f"write_partitions({table}): partition column '{partition_col}' not in DataFrame")
    path = storage.table_path(table)
    predicate = partition_predicate(partition_col, values)

    def write() -> None:
        with commit_lock(df.sparkSession, path, what=table):
            (df.write.format("delta").mode("overwrite")
             .option("replaceWhere", predicate)
             .option("mergeSchema", "true" if merge_schema else "false")
             .option("userMetadata", description or f"replace {predicate}")
             .partitionBy(partition_col)
             .save(path))

    with_conflict_retries(write, what=f"{table}: commit ({predicate})", retries=storage.write_retries)
    log.info("wrote %s (%s)", table, predicate)


def with_conflict_retries(action: Callable[[], T], *, what: str, retries: int, advice: str = "") -> T:
    """Run ``action`` (an idempotent Delta commit); retry it with jittered back-off, ``retries`` times at
    most, when a concurrent writer's commit conflicts with it; then :class:`WriteConflictError`."""
    attempt = 0
    while True:
        try:
            return action()
        except Exception as e:
            if not _is_conflict(e):
                raise
            if attempt >= retries:
                raise WriteConflictError(f"{what} kept conflicting with concurrent writers after {attempt + 1} "
                                         f"attempts{'; ' + advice if advice else ''}") from e
            attempt += 1
            wait = min(10.0, 0.5 * 2 ** attempt) * (0.5 + random.random())
            log.warning("%s: concurrent commit conflict (%s); retry %d/%d in %.1fs", what, type(e).__name__,
                        attempt, retries, wait)
            time.sleep(wait)


def restore_partitions(spark: SparkSession, storage: StorageConfig, table: str, *, partition_col: str,
                       values: Sequence[object], version: int | None, note: str = "") -> None:
    """Put the partitions ``partition_col IN values`` of ``table`` back as they were at ``version`` (``None``:
    the table did not exist then, so they become empty), in one ``replaceWhere`` commit (``note`` ends its
    description). Time travel reads the files the later commits only marked as removed, so this works until
    they are vacuumed."""
    current = read_table(spark, storage, table)
    if version is None:
        previous = current.limit(0)
    else:
        old = read_table(spark, storage, table, version=version)
        # a column added since (merge_schema) is null in the rows put back
        cols = [F.col(f.name) if f.name in old.columns else F.lit(None).cast(f.dataType).alias(f.name)
                for f in current.schema.fields]
        previous = old.where(F.expr(partition_predicate(partition_col, values))).select(*cols)
    write_partitions(previous, storage, table, partition_col=partition_col, values=values,
                     description=f"restore {partition_predicate(partition_col, values)} as of version {version}{note}")


def _partition_value(value: object) -> str:
    """A partition value as the Delta log writes it (``partitionValues`` are strings)."""
    return value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else str(value)


def committed_partitions(spark: SparkSession, storage: StorageConfig, table: str, version: int,
                         partition_col: str) -> set[str]:
    """The values of ``partition_col`` whose files the commit ``version`` of ``table`` added or removed (read
    from that commit's file in ``_delta_log``)."""
    path = f"{storage.table_path(table).rstrip('/')}/_delta_log/{version:020d}.json"
    actions = spark.read.json(path)
    found: set[str] = set()
    for action in ("add", "remove"):
        if action not in actions.columns:
            continue
        for row in (actions.where(F.col(action).isNotNull())
                    .select(F.to_json(F.col(f"{action}.partitionValues")).alias("p")).distinct().collect()):
            value = json.loads(row["p"] or "{}").get(partition_col)
            if value is not None:
                found.add(str(value))
    return found


class PartitionUnit:
    """Several tables' date partitions replaced as one unit of work, as far as Delta allows.

    Each :meth:`write` is its own atomic commit (Delta has no transaction across tables), marked with the
    unit's token in its ``userMetadata``. When the unit fails with an error before it is done
    (:func:`partition_unit`), the partitions it already replaced are put back as they were just before its
    own commit, last written first, so a failed run leaves the previous rows in every table. A table that
    another writer committed to *after* the unit's commit (an overlapping run, a repair) is left as it is, with
    an error in the log: restoring it would drop that writer's rows. A process killed between two commits
    cannot undo anything: the rerun of the same dates completes it.
    """

    def __init__(self, spark: SparkSession, storage: StorageConfig) -> None:
        self.spark, self.storage = spark, storage
        self.mark = f"[unit {uuid.uuid4().hex[:16]}]"  # ends the userMetadata of every commit of this unit
        self.written: list[tuple[str, str, list[object]]] = []
        self.not_restored: list[str] = []

    def write(self, df: DataFrame, table: str, *, partition_col: str, values: Sequence[object],
              description: str = "", merge_schema: bool = False) -> None:
        predicate = partition_predicate(partition_col, values)
        write_partitions(df, self.storage, table, partition_col=partition_col, values=values,
                         description=f"{description or 'replace ' + predicate} {self.mark}",
                         merge_schema=merge_schema)
        self.written.append((table, partition_col, list(values)))

    def _restore_base(self, table: str, col: str, values: Sequence[object]) -> tuple[bool, int | None]:
        """(restorable, version to restore from): the version just before this unit's first commit to
        ``table`` (None: the table did not exist then). Not restorable when a later commit of another writer
        added or removed files in the same partitions, or this unit's commit is no longer among the table's
        last ``HISTORY_LIMIT`` versions; commits of other writers to other dates do not matter."""
        history = (DeltaTable.forPath(self.spark, self.storage.table_path(table)).history(HISTORY_LIMIT)
                   .select("version", "userMetadata").orderBy("version").collect())
        ours = [int(r["version"]) for r in history if self.mark in (r["userMetadata"] or "")]
        if not ours:
            log.error("not restoring %s: this job's commit is not among its last %d versions", table, HISTORY_LIMIT)
            return False, None
        mine = {_partition_value(v) for v in values}
        clashing = []
        for r in history:
            version = int(r["version"])
            if version <= ours[0] or self.mark in (r["userMetadata"] or ""):
                continue
            try:
                touched = committed_partitions(self.spark, self.storage, table, version, col)
            except Exception as e:  # an unreadable commit counts as one that may have touched them
                log.warning("%s: cannot read which partitions version %d changed (%s)", table, version, e)
                touched = mine
            if mine & touched:
                clashing.append(version)
        if clashing:
            log.error("not restoring %s (%s): versions %s, committed by another writer after this job's version "
                      "%d, changed the same partitions; their rows are kept (rerun the job for those dates)",
                      table, partition_predicate(col, values), clashing, ours[0])
            return False, None
        return True, (ours[0] - 1 if ours[0] > 0 else None)

    def rollback(self) -> None:
        for table, col, values in reversed(self.written):
            restorable, version = self._restore_base(table, col, values)
            if not restorable:
                self.not_restored.append(table)
                continue
            log.warning("rolling back %s (%s) to version %s", table, partition_predicate(col, values), version)
            restore_partitions(self.spark, self.storage, table, partition_col=col, values=values, version=version,
                               note=f" {self.mark}")
        self.written.clear()


@contextlib.contextmanager
def partition_unit(spark: SparkSession, storage: StorageConfig) -> Iterator[PartitionUnit]:
    """``with partition_unit(spark, storage) as unit: unit.write(...)``: see :class:`PartitionUnit`. An error
    inside the block rolls back what the unit wrote, then propagates (a failing rollback is logged and the
    original error still propagates, with a note; so do the tables left as they were). So does a stop:
    ``KeyboardInterrupt`` or :class:`JobTerminated` (SIGTERM, see :mod:`adrec_spark.termination`), after the
    Spark jobs still running are cancelled."""
    unit = PartitionUnit(spark, storage)
    try:
        yield unit
    except (Exception, KeyboardInterrupt, JobTerminated) as e:
        if not isinstance(e, Exception):  # told to stop: no job of this run may commit after the rollback
            termination.stop_spark_work(settle_s=termination.SETTLE_S)
        try:
            unit.rollback()
        except Exception:
            log.exception("rollback failed: rerun the job for the same dates to complete its tables")
            e.add_note("adrec: the rollback of the tables already written failed (see the log); rerun the job")
        if unit.not_restored:
            e.add_note(f"adrec: not restored, another writer changed the same partitions after this job: "
                       f"{', '.join(unit.not_restored)}")
        raise


def date_range(start: dt.date, end: dt.date) -> list[dt.date]:
    if end < start:
        raise ValueError(f"end date {end} is before start date {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
