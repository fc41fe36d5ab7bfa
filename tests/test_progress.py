"""Progress lines for long Spark work (issue 15, item 6): what a line says, when lines come, and a Spark
accumulator that the tasks add to reaching the driver's reporter while the job runs."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from adrec_spark import model_udf as U
from adrec_spark import progress as P


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_count_line_says_done_of_total_rate_and_eta() -> None:
    clock, done = FakeClock(), [0]
    p = P.Progress("scoring", unit="pairs", total=40_000, done=lambda: done[0], clock=clock)
    clock.now += 30
    assert p.line() == "scoring: 0/40,000 pairs (0.0%), no task finished yet, elapsed 30s"
    clock.now += 100  # 130 s in: 12,345 pairs = 94.96 pairs/s; 27,655 left take 291.2 s
    done[0] = 12_345
    assert p.line() == "scoring: 12,345/40,000 pairs (30.9%), 95.0 pairs/s, ETA 4m51s, elapsed 2m10s"
    done[0] = 40_000
    assert p.line() == "scoring: 40,000/40,000 pairs (100.0%), 307.7 pairs/s, elapsed 2m10s"
    assert p.summary() == "scoring: 40,000 pairs in 2m10s (307.7 pairs/s)"


def test_a_count_line_without_a_total_and_a_total_known_later() -> None:
    clock, planned = FakeClock(), [None]
    p = P.Progress("evaluation", unit="rows", total=lambda: planned[0], done=lambda: 500, clock=clock)
    clock.now += 10
    assert p.line() == "evaluation: 500 rows, 50.0 rows/s, elapsed 10s"
    planned[0] = 2_000
    assert p.line() == "evaluation: 500/2,000 rows (25.0%), 50.0 rows/s, ETA 30s, elapsed 10s"


def test_a_task_line_counts_the_running_stages_and_their_rate_since_first_seen() -> None:
    clock = FakeClock()
    stages = {3: (2, 8)}
    p = P.Progress("etl", tasks=lambda: dict(stages), clock=clock)
    p.step = "write events_clean"
    clock.now += 10
    assert p.line() == "etl [write events_clean]: 2/8 tasks of 1 running stage (25.0%), elapsed 10s"
    clock.now += 20  # 4 more tasks in 20 s: 0.2 tasks/s, 2 left: 10 s
    stages[3] = (6, 8)
    assert p.line() == ("etl [write events_clean]: 6/8 tasks of 1 running stage (75.0%), 0.20 tasks/s, ETA 10s, "
                        "elapsed 30s")
    stages.clear()
    assert p.line() == "etl [write events_clean]: no Spark stage running, elapsed 30s"


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (60, "1m00s"), (291.2, "4m51s"),
                                           (3725, "1h02m")])
def test_durations_read_as_minutes_and_seconds(seconds: float, text: str) -> None:
    assert P.format_duration(seconds) == text


def test_lines_come_every_interval_while_the_block_runs_and_none_for_a_short_block(spark, caplog) -> None:
    caplog.set_level(logging.INFO, logger="adrec_spark.progress")
    counter = SimpleNamespace(value=7)
    with P.progress(spark, "quick", total=10, unit="rows", every_s=5.0, counter=counter):
        pass
    assert not [r for r in caplog.records if r.name == "adrec_spark.progress"]

    with P.progress(spark, "slow", total=10, unit="rows", every_s=0.05, counter=counter):
        time.sleep(0.4)
    lines = [r.getMessage() for r in caplog.records if r.name == "adrec_spark.progress"]
    assert len(lines) >= 4, lines
    assert all(line.startswith("slow: 7/10 rows (70.0%), ") for line in lines[:-1]), lines
    assert re.fullmatch(r"slow: 7 rows in \ds \([\d.,]+ rows/s\)", lines[-1]), lines[-1]


def test_progress_is_off_with_a_zero_interval(spark, caplog) -> None:
    caplog.set_level(logging.INFO, logger="adrec_spark.progress")
    with P.progress(spark, "off", every_s=0, counter=SimpleNamespace(value=1)):
        time.sleep(0.1)
    assert not [r for r in caplog.records if r.name == "adrec_spark.progress"]


def test_the_scoring_udf_adds_each_batch_to_the_progress_counter(monkeypatch) -> None:
    """Run the UDF's body in this process (no Spark): each batch adds its pairs to ``settings.progress``."""
    class Scorer:
        def score(self, ads, histories, numeric):
            return np.zeros(len(ads), dtype=np.float32)

    monkeypatch.setattr(U, "get_scorer", lambda s, device=None: Scorer())
    added: list[int] = []
    settings = U.UdfSettings(model_file="unused", progress=SimpleNamespace(add=added.append))
    batches = [(pd.Series(["a"] * n), pd.Series(["h"] * n), pd.DataFrame({"x": np.zeros(n)})) for n in (3, 5)]
    out = list(U.model_udf(settings, output="score").func(iter(batches)))
    assert [len(o) for o in out] == [3, 5]
    assert added == [3, 5]


def test_an_accumulator_the_tasks_add_to_reaches_the_reporter_during_the_job(spark, caplog) -> None:
    """8 tasks of 5 rows, each sleeping 0.3 s per batch, on 2 cores: a line every 0.1 s sees the count grow
    one finished task at a time, before the job ends, and the closing line has all 40 rows."""
    caplog.set_level(logging.INFO, logger="adrec_spark.progress")
    acc = spark.sparkContext.accumulator(0)

    @pandas_udf("long")  # type: ignore[call-overload]
    def slow(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        for ids in batches:
            time.sleep(0.3)
            acc.add(len(ids))
            yield ids

    df = spark.range(40).repartition(8).select(slow(F.col("id")).alias("id"))
    with P.progress(spark, "scoring", total=40, unit="pairs", every_s=0.1, counter=acc):
        assert df.agg(F.sum("id")).first()[0] == 780  # the UDF's column is used (a count would prune it)
    lines = [r.getMessage() for r in caplog.records if r.name == "adrec_spark.progress"]
    counts = [int(m[1]) for line in lines if (m := re.match(r"scoring: (\d+)/40 pairs", line))]
    assert any(0 < c < 40 for c in counts), lines  # seen while the job ran
    assert counts == sorted(counts), lines
    assert lines[-1].startswith("scoring: 40 pairs in "), lines


def test_without_a_counter_the_lines_count_the_running_stage_tasks(spark, caplog) -> None:
    """The ETL's kind of line: tasks of the running stages from the status tracker, while a job runs."""
    caplog.set_level(logging.INFO, logger="adrec_spark.progress")

    @pandas_udf("long")  # type: ignore[call-overload]
    def slow(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        for ids in batches:
            time.sleep(0.3)
            yield ids

    with P.progress(spark, "etl", every_s=0.1):
        assert spark.range(40).repartition(8).select(slow(F.col("id")).alias("id")).agg(F.sum("id")).first()[0] == 780
    lines = [r.getMessage() for r in caplog.records if r.name == "adrec_spark.progress"]
    seen = [(int(m[1]), int(m[2])) for line in lines if (m := re.match(r"etl: (\d+)/(\d+) tasks of 1 running", line))]
    assert (8 in {total for _, total in seen}) and any(0 < done < 8 for done, total in seen if total == 8), lines
    assert re.fullmatch(r"etl: done in \ds", lines[-1]), lines[-1]


def test_a_stopwatch_adds_up_each_stage_and_logs_it(monkeypatch, caplog) -> None:
    import logging

    from adrec_spark import logs

    clock = iter([0.0, 1.0, 3.5, 10.0, 10.25, 12.0])  # made, stage a (2.5 s), stage a again (0.25 s), elapsed
    monkeypatch.setattr(logs.time, "perf_counter", lambda: next(clock))
    watch = logs.Stopwatch()
    with watch.stage("a"):
        pass
    with caplog.at_level(logging.INFO), watch.stage("a", log=logging.getLogger("t"), what="the second a"):
        pass
    assert watch.stages == {"a": 2.75}
    assert watch.elapsed() == 12.0
    assert "the second a done in 0.2s" in caplog.text
