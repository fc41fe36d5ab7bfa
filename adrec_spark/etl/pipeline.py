"""The ETL job: landing files for one date (or a backfill range) into the Delta tables.

Extract (landing files, catalog snapshot) -> pure transforms (clean, features) -> load (one
atomic partition replace per table). Counts are actions on persisted frames; no rows reach the driver.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.config import AppConfig
from adrec_spark.errors import AdrecError, InputDataError
from adrec_spark.etl import clean, features
from adrec_spark.io import landing, tables
from adrec_spark.progress import progress

log = logging.getLogger(__name__)


class AccountingError(AdrecError):
    """clean + rejected + duplicates did not add up to the input: a bug, never silently accepted."""


@dataclass
class DayMetrics:
    ds: str
    input_rows: int = 0
    clean_rows: int = 0
    rejected_rows: int = 0
    duplicate_rows: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    training_examples: int = 0


@dataclass
class EtlResult:
    dates: list[str]
    days: dict[str, DayMetrics]
    ads_input: int
    ads_clean: int
    ads_rejected_by_reason: dict[str, int]
    users_profiled: int
    seconds: float

    @property
    def input_rows(self) -> int:
        return sum(d.input_rows for d in self.days.values())

    @property
    def clean_rows(self) -> int:
        return sum(d.clean_rows for d in self.days.values())

    @property
    def rejected_rows(self) -> int:
        return sum(d.rejected_rows for d in self.days.values())

    @property
    def duplicate_rows(self) -> int:
        return sum(d.duplicate_rows for d in self.days.values())

    @property
    def training_examples(self) -> int:
        return sum(d.training_examples for d in self.days.values())


def _previous_event_ids(spark: SparkSession, cfg: AppConfig, first: dt.date,
                        processing: list[str]) -> DataFrame | None:
    """Event ids kept on the ``dedup_lookback_days`` before ``first`` (not the dates being replaced)."""
    if cfg.etl.dedup_lookback_days == 0 or tables.table_version(spark, cfg.storage, S.EVENTS_CLEAN) is None:
        return None
    lo = first - dt.timedelta(days=cfg.etl.dedup_lookback_days)
    return (tables.read_table(spark, cfg.storage, S.EVENTS_CLEAN)
            .where((F.col(S.DS) >= F.lit(lo.isoformat()).cast("date"))
                   & (F.col(S.DS) < F.lit(first.isoformat()).cast("date"))
                   & ~F.col(S.DS).cast("string").isin(processing))
            .select(S.EVENT_ID))


def _status_counts(marked: DataFrame) -> dict[str, DayMetrics]:
    out: dict[str, DayMetrics] = {}
    for row in marked.groupBy(S.DS, clean.STATUS, S.REASON).count().collect():
        ds = str(row[S.DS])
        m = out.setdefault(ds, DayMetrics(ds=ds))
        n = int(row["count"])
        if row[clean.STATUS] == clean.CLEAN:
            m.clean_rows += n
        elif row[clean.STATUS] == clean.DUPLICATE:
            m.duplicate_rows += n
        else:
            m.rejected_rows += n
            m.rejected_by_reason[row[S.REASON]] = m.rejected_by_reason.get(row[S.REASON], 0) + n
    return out


def run_etl(spark: SparkSession, cfg: AppConfig, start: dt.date, end: dt.date | None = None) -> EtlResult:
    """Process landing dates ``start..end`` (one date when ``end`` is None) and replace their partitions.

    A single date must have input; a backfill skips dates without input (with a warning). The ad catalog,
    user profiles and ad snapshot are written as of the last processed date. A long run logs the tasks of its
    running Spark stages every ``spark.progress_interval_s`` seconds.
    """
    with progress(spark, "etl", every_s=cfg.spark.progress_interval_s):
        return _run_etl(spark, cfg, start, end)


def _run_etl(spark: SparkSession, cfg: AppConfig, start: dt.date, end: dt.date | None) -> EtlResult:
    t0 = time.perf_counter()
    etl, storage = cfg.etl, cfg.storage
    dates = tables.date_range(start, end or start)
    backfill = len(dates) > 1

    raw = landing.read_events(spark, storage.raw_events, dates, storage.input_format, allow_missing=backfill)
    as_of = dates[-1]
    ads_parsed = clean.parse_ads(landing.read_ads(spark, storage.raw_ads, as_of, storage.input_format),
                                 ds=as_of, text_max_chars=etl.text_max_chars)
    ads_parsed = ads_parsed.persist(StorageLevel.MEMORY_AND_DISK)
    ads_clean = clean.clean_ad_rows(ads_parsed)

    parsed = clean.parse_events(raw, text_max_chars=etl.text_max_chars,
                                max_clock_skew_minutes=etl.max_clock_skew_minutes)
    parsed = clean.reject_unknown_ads(parsed, ads_clean)
    processed = sorted({str(r[S.DS]) for r in raw.select(S.DS).distinct().collect()})
    if not processed:
        raise InputDataError(f"no events for {start}{'..' + str(end) if end else ''}: the landing files hold "
                             "only blank lines")
    marked = clean.mark_duplicates(parsed, _previous_event_ids(spark, cfg, start, processed))
    marked = marked.persist(StorageLevel.MEMORY_AND_DISK)

    input_by_day = {str(r[S.DS]): int(r["count"]) for r in raw.groupBy(S.DS).count().collect()}
    days = _status_counts(marked)
    for ds, n in input_by_day.items():
        m = days.setdefault(ds, DayMetrics(ds=ds))
        m.input_rows = n
        if m.clean_rows + m.rejected_rows + m.duplicate_rows != n:
            raise AccountingError(
                f"{ds}: clean {m.clean_rows} + rejected {m.rejected_rows} + duplicates {m.duplicate_rows}"
                f" != input {n}")
        log.info("%s: input %d = clean %d + rejected %d + duplicates %d; rejected by reason %s", ds, n,
                 m.clean_rows, m.rejected_rows, m.duplicate_rows, m.rejected_by_reason)

    ads_reasons = {r[S.REASON]: int(r["count"]) for r in
                   ads_parsed.where(F.col(clean.STATUS) == clean.REJECTED).groupBy(S.REASON).count().collect()}
    ads_total = ads_parsed.count()
    ads_ok = ads_total - sum(ads_reasons.values())
    log.info("ad catalog %s: %d rows = %d clean + %d rejected %s", as_of, ads_total, ads_ok,
             sum(ads_reasons.values()), ads_reasons)

    # Six tables, one commit each: an error before the last one (etl_runs, the day's record) puts back
    # the partitions already replaced.
    with tables.partition_unit(spark, storage) as unit:
        unit.write(clean.clean_event_rows(marked), S.EVENTS_CLEAN,
                   partition_col=S.DS, values=processed)
        rejected = clean.rejected_rows(marked, "events").unionByName(clean.rejected_rows(ads_parsed, "ads"))
        unit.write(rejected, S.EVENTS_REJECTED, partition_col=S.DS,
                   values=sorted({*processed, as_of.isoformat()}))
        marked.unpersist()

        # Features read the clean events back, with the look-back window before the first date.
        lo = (start - dt.timedelta(days=etl.lookback_days)).isoformat()
        window = (tables.read_table(spark, storage, S.EVENTS_CLEAN)
                  .where((F.col(S.DS) >= F.lit(lo).cast("date"))
                         & (F.col(S.DS) <= F.lit(as_of.isoformat()).cast("date"))))
        examples = features.training_examples(
            window, ads_clean, target_ds=processed, max_items=etl.history_max_items,
            max_chars=etl.history_max_chars, attribution_hours=etl.attribution_hours,
            rate_prior=etl.rate_prior, rate_prior_strength=etl.rate_prior_strength,
        ).persist(StorageLevel.MEMORY_AND_DISK)
        # No split here: the training job splits the whole training data by time (adrec_spark.training.split).
        unit.write(examples, S.TRAINING_EXAMPLES, partition_col=S.DS, values=processed)
        for r in examples.groupBy(S.DS).count().collect():
            days[str(r[S.DS])].training_examples = int(r["count"])
        examples.unpersist()

        profiles = features.user_profiles(window, ads_clean, as_of=as_of.isoformat(),
                                          max_items=etl.history_max_items, max_chars=etl.history_max_chars)
        unit.write(profiles, S.USER_PROFILES, partition_col=S.DS, values=[as_of.isoformat()])
        unit.write(features.ad_snapshot(ads_clean, window, as_of=as_of.isoformat()), S.ADS,
                   partition_col=S.DS, values=[as_of.isoformat()])
        users = tables.read_table(spark, storage, S.USER_PROFILES).where(
            F.col(S.DS) == F.lit(as_of.isoformat()).cast("date")).count()
        ads_parsed.unpersist()

        result = EtlResult(dates=processed, days=days, ads_input=ads_total, ads_clean=ads_ok,
                           ads_rejected_by_reason=ads_reasons, users_profiled=users,
                           seconds=time.perf_counter() - t0)
        _write_run_log(unit, result)
    log.info("ETL %s..%s: %d input rows, %d clean, %d rejected, %d duplicates, %d training examples, "
             "%d users, %.1fs (%.0f events/s)", processed[0], processed[-1], result.input_rows,
             result.clean_rows, result.rejected_rows, result.duplicate_rows, result.training_examples,
             users, result.seconds, result.input_rows / max(result.seconds, 1e-9))
    return result


def _write_run_log(unit: tables.PartitionUnit, result: EtlResult) -> None:
    """One row per processed date in ``etl_runs`` (replaced on rerun): the job's accounting metrics."""
    rows = [(dt.date.fromisoformat(m.ds), m.input_rows, m.clean_rows, m.rejected_rows, m.duplicate_rows,
             {k: int(v) for k, v in m.rejected_by_reason.items()}, m.training_examples, result.seconds)
            for m in result.days.values()]
    df = unit.spark.createDataFrame(rows, "ds date, input_rows long, clean_rows long, rejected_rows long, "
                                     "duplicate_rows long, rejected_by_reason map<string,long>, "
                                     "training_examples long, run_seconds double")
    unit.write(df, S.ETL_RUNS, partition_col=S.DS, values=result.dates)
