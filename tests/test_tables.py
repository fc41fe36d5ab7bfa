"""The tables module's unit of work: what a failed job puts back, and what it leaves to another writer."""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
import time

import pytest
from pyspark.sql import functions as F

from adrec_spark.errors import JobTerminated
from adrec_spark.io import tables
from adrec_spark.termination import terminate_as_error

D1, D2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)


def _frame(spark, day: dt.date, *ids: str):
    return spark.createDataFrame([(i, day) for i in ids], "id string, ds date")


def _write(spark, storage, table: str, day: dt.date, *ids: str) -> None:
    tables.write_partitions(_frame(spark, day, *ids), storage, table, partition_col="ds", values=[day])


def _rows(spark, storage, table: str) -> set[tuple[str, str]]:
    df = tables.read_table(spark, storage, table)
    return {(r["id"], r["ds"].isoformat()) for r in df.collect()}


def _fail_unit(spark, storage, body) -> pytest.ExceptionInfo[RuntimeError]:
    with pytest.raises(RuntimeError, match="injected") as info, tables.partition_unit(spark, storage) as unit:
        body(unit)
        raise RuntimeError("injected")
    return info


def test_a_failed_unit_puts_back_every_table_it_wrote(spark, cfg) -> None:
    st = cfg.storage
    _write(spark, st, "a", D1, "a-old")
    _write(spark, st, "b", D1, "b-old")
    _write(spark, st, "b", D2, "b-other-day")

    def body(unit):
        unit.write(_frame(spark, D1, "a-new"), "a", partition_col="ds", values=[D1])
        unit.write(_frame(spark, D1, "b-new"), "b", partition_col="ds", values=[D1])
        unit.write(_frame(spark, D1, "c-new"), "c", partition_col="ds", values=[D1])  # a new table
        assert _rows(spark, st, "a") == {("a-new", "2024-01-01")}  # the writes did land

    info = _fail_unit(spark, st, body)
    assert _rows(spark, st, "a") == {("a-old", "2024-01-01")}
    assert _rows(spark, st, "b") == {("b-old", "2024-01-01"), ("b-other-day", "2024-01-02")}
    assert _rows(spark, st, "c") == set()  # created by the unit: its date is empty again
    assert not getattr(info.value, "__notes__", None)


def test_a_failed_unit_keeps_what_another_writer_committed_to_the_same_date_since(spark, cfg) -> None:
    st = cfg.storage
    _write(spark, st, "a", D1, "a-old")
    _write(spark, st, "b", D1, "b-old")

    def body(unit):
        unit.write(_frame(spark, D1, "a-mine"), "a", partition_col="ds", values=[D1])
        unit.write(_frame(spark, D1, "b-mine"), "b", partition_col="ds", values=[D1])
        _write(spark, st, "a", D1, "a-theirs")  # an overlapping run for the same date commits after us
        _write(spark, st, "b", D2, "b-theirs")  # a run for another date: does not stop the restore

    info = _fail_unit(spark, st, body)
    assert _rows(spark, st, "a") == {("a-theirs", "2024-01-01")}  # not put back over the other writer's rows
    assert _rows(spark, st, "b") == {("b-old", "2024-01-01"), ("b-theirs", "2024-01-02")}
    assert any("not restored" in n and "a" in n.split(":")[-1] for n in info.value.__notes__)


def test_committed_partitions_reads_the_dates_a_commit_replaced(spark, cfg) -> None:
    st = cfg.storage
    _write(spark, st, "t", D1, "x")  # version 0: adds D1
    _write(spark, st, "t", D2, "y")  # version 1: adds D2
    _write(spark, st, "t", D1, "z")  # version 2: removes and adds D1
    assert tables.committed_partitions(spark, st, "t", 0, "ds") == {"2024-01-01"}
    assert tables.committed_partitions(spark, st, "t", 1, "ds") == {"2024-01-02"}
    assert tables.committed_partitions(spark, st, "t", 2, "ds") == {"2024-01-01"}
    empty = _frame(spark, D2).where(F.lit(False))
    tables.write_partitions(empty, st, "t", partition_col="ds", values=[D2])  # version 3: removes D2 only
    assert tables.committed_partitions(spark, st, "t", 3, "ds") == {"2024-01-02"}


def test_a_unit_that_wrote_a_date_twice_puts_back_what_was_there_before_both(spark, cfg) -> None:
    st = cfg.storage
    _write(spark, st, "a", D1, "a-old")

    def body(unit):
        unit.write(_frame(spark, D1, "a-first"), "a", partition_col="ds", values=[D1])
        unit.write(_frame(spark, D1, "a-second"), "a", partition_col="ds", values=[D1])

    info = _fail_unit(spark, st, body)
    assert _rows(spark, st, "a") == {("a-old", "2024-01-01")}
    assert not getattr(info.value, "__notes__", None)  # its own restore commit is not another writer's


def test_sigterm_while_a_spark_job_runs_puts_back_the_unit_and_leaves_the_driver_usable(spark, cfg) -> None:
    st = cfg.storage
    _write(spark, st, "a", D1, "a-old")

    def slow(batches):
        import time

        for b in batches:
            time.sleep(30)
            yield b

    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    t0 = time.monotonic()
    with pytest.raises(JobTerminated), terminate_as_error(), tables.partition_unit(spark, st) as unit:
        unit.write(_frame(spark, D1, "a-new"), "a", partition_col="ds", values=[D1])
        timer.start()
        spark.range(0, 2, 1, 2).mapInPandas(slow, "id long").collect()  # the main thread waits in Py4J
    # The stop interrupted the wait (it did not come after the 30-s tasks), cancelled them and rolled back.
    assert time.monotonic() - t0 < 25
    assert _rows(spark, st, "a") == {("a-old", "2024-01-01")}
    assert spark.range(3).count() == 3  # a new Py4J connection, not the interrupted call's stale answer
    assert spark.sparkContext.statusTracker().getActiveJobsIds() == []


def test_a_new_column_is_added_to_an_older_table_and_a_failed_unit_restores_around_it(spark, cfg) -> None:
    """A release that adds a column writes to the table of an earlier release (the column is null in the older
    partitions); a failed unit that wrote it puts the date back with the column null."""
    st = cfg.storage
    _write(spark, st, "t", D1, "old-d1")
    _write(spark, st, "t", D2, "old-d2")
    wider = spark.createDataFrame([("new-d2", D2, ["x"])], "id string, ds date, texts array<string>")

    def body(unit):
        unit.write(wider, "t", partition_col="ds", values=[D2], merge_schema=True)
        got = {r["id"]: r["texts"] for r in tables.read_table(spark, st, "t").collect()}
        assert got == {"old-d1": None, "new-d2": ["x"]}

    _fail_unit(spark, st, body)
    got = {(r["id"], r["texts"]) for r in tables.read_table(spark, st, "t").collect()}
    assert got == {("old-d1", None), ("old-d2", None)}
