"""The ETL job: landing files for one date (or a backfill range) into the Delta tables.

Extract (landing files, the catalog snapshot of each date) -> pure transforms (clean, features) -> load (one
atomic partition replace per table). Counts are actions on persisted frames; no rows reach the driver.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.config import AppConfig
from adrec_spark.errors import AdrecError, InputDataError
from adrec_spark.etl import clean, features
from adrec_spark.io import landing, tables
from adrec_spark.logs import Stopwatch
from adrec_spark.progress import progress

log = logging.getLogger(__name__)


class AccountingError(AdrecError):
    """clean + rejected + duplicates did not add up to the input: a bug, never silently accepted."""


class RejectedFractionError(InputDataError):
    """A date's share of rejected input rows is above ``etl.max_rejected_fraction``: nothing is written."""


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


def _previous_impressions(spark: SparkSession, cfg: AppConfig, first: dt.date,
                          processing: list[str]) -> DataFrame | None:
    """Clean impressions of the ``lookback_days`` before ``first`` (not the dates being replaced): what a
    click or conversion of this run may follow."""
    if tables.table_version(spark, cfg.storage, S.EVENTS_CLEAN) is None:
        return None
    lo = first - dt.timedelta(days=cfg.etl.lookback_days)
    return (tables.read_table(spark, cfg.storage, S.EVENTS_CLEAN)
            .where((F.col(S.DS) >= F.lit(lo.isoformat()).cast("date"))
                   & (F.col(S.DS) < F.lit(first.isoformat()).cast("date"))
                   & ~F.col(S.DS).cast("string").isin(processing)
                   & (F.col(S.EVENT_TYPE) == S.IMPRESSION))
            .select(S.DS, S.USER_ID, S.AD_ID, S.EVENT_TS))


def _lookback_window(spark: SparkSession, cfg: AppConfig, last: str, first: str | None = None) -> DataFrame:
    """Clean events landed from ``lookback_days`` before ``first`` (default: ``last``) to ``last``: what
    features for the dates ``first..last`` may use."""
    lo = dt.date.fromisoformat(first or last) - dt.timedelta(days=cfg.etl.lookback_days)
    return (tables.read_table(spark, cfg.storage, S.EVENTS_CLEAN)
            .where((F.col(S.DS) >= F.lit(lo.isoformat()).cast("date"))
                   & (F.col(S.DS) <= F.lit(last).cast("date"))))


def _training_examples(spark: SparkSession, cfg: AppConfig, processed: list[str],
                       catalog: Callable[[str], DataFrame]) -> DataFrame:
    """Training examples of the ``processed`` dates, each as a nightly run for it makes them (its own
    look-back window, its own catalog): one pass over all dates when that gives the same rows, else one
    pass per date."""
    etl = cfg.etl
    kw = dict(max_items=etl.history_max_items, max_chars=etl.history_max_chars,
              attribution_hours=etl.attribution_hours, rate_prior=etl.rate_prior,
              rate_prior_strength=etl.rate_prior_strength)
    if _one_pass_is_exact(spark, cfg, processed):
        return features.training_examples(_lookback_window(spark, cfg, processed[-1], processed[0]),
                                          catalog(processed[-1]), target_ds=processed, **kw)
    log.info("features of %d dates computed date by date (point in time: look-back windows, catalogs or "
             "late events differ between them)", len(processed))
    return reduce(DataFrame.unionByName, [features.training_examples(
        _lookback_window(spark, cfg, d), catalog(d), target_ds=[d], **kw) for d in processed])


def _one_pass_is_exact(spark: SparkSession, cfg: AppConfig, processed: list[str]) -> bool:
    """Whether one pass over the window of all ``processed`` dates sees, for each date, exactly what a pass
    over its own window would: one catalog snapshot serves every date, no event landed in the window of
    the first date but before that of the last (the look-back is wider than the events), and no event
    landed on a later date is earlier than an event of an earlier date plus the attribution window (no
    late event is seen by, or labels, an impression of an earlier date)."""
    if len(processed) == 1:
        return True
    dates = [dt.date.fromisoformat(d) for d in processed]
    if len(set(landing.catalog_snapshots(spark, cfg.storage.raw_ads, dates).values())) > 1:
        return False
    stats = (_lookback_window(spark, cfg, processed[-1], processed[0]).groupBy(S.DS)
             .agg(F.min(S.EVENT_TS).alias("lo"), F.max(S.EVENT_TS).alias("hi")).collect())
    oldest_needed = dates[-1] - dt.timedelta(days=cfg.etl.lookback_days)
    if any(r[S.DS] < oldest_needed for r in stats):
        return False
    span = {r[S.DS]: (r["lo"], r["hi"]) for r in stats if r[S.DS] >= dates[0]}
    days = sorted(span)
    slack = cfg.etl.attribution_hours * 3600.0
    return all(span[d][1] + slack < min(span[e][0] for e in days[i + 1:]) for i, d in enumerate(days[:-1]))


def _check_rejected_fraction(days: dict[str, DayMetrics], *, max_fraction: float, on_excess: str) -> None:
    """Fail (before anything is written) or warn when a date rejects more than ``max_fraction`` of its input."""
    over = [m for _, m in sorted(days.items()) if m.input_rows and m.rejected_rows / m.input_rows > max_fraction]
    if not over:
        return
    lines = []
    for m in over:
        top = sorted(m.rejected_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        lines.append(f"{m.ds}: {m.rejected_rows} of {m.input_rows} input rows rejected "
                     f"({m.rejected_rows / m.input_rows:.1%}); top reasons "
                     + ", ".join(f"{reason} {n}" for reason, n in top))
    msg = (f"rejected share above etl.max_rejected_fraction={max_fraction:g} on {len(over)} date(s): "
           + "; ".join(lines))
    if on_excess == "warn":
        log.warning("%s; loaded anyway (etl.on_rejected_excess: warn)", msg)
        return
    raise RejectedFractionError(f"{msg}. Nothing was written: fix the input, or set "
                                "etl.on_rejected_excess=warn to load such dates anyway")


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

    A single date must have input; a backfill skips dates without input (with a warning). Each date is
    processed as a nightly run for it would: its own catalog snapshot (the newest on or before it), its own
    look-back window; the ``ads`` snapshot is written for every processed date (and the last date), user
    profiles as of the last date. A date whose rejected share exceeds ``etl.max_rejected_fraction`` fails
    the run before anything is written (or warns, with ``etl.on_rejected_excess: warn``). A long run logs the tasks
    of its running Spark stages every ``spark.progress_interval_s`` seconds.
    """
    with progress(spark, "etl", every_s=cfg.spark.progress_interval_s):
        return _run_etl(spark, cfg, start, end)


@dataclass
class _Inputs:
    """One run's parsed input: the dates with events (``processed``), every date whose catalog is read
    (``catalog_dates``: those and the last date), the parsed catalog rows (persisted) and the clean ones."""

    raw: DataFrame
    processed: list[str]
    catalog_dates: list[str]
    ads_parsed: DataFrame
    ads_clean: DataFrame

    def catalog(self, d: str) -> DataFrame:
        """The clean catalog of date ``d``: each date sees its own snapshot (the newest on or before it)."""
        return self.ads_clean.where(F.col(S.DS) == F.lit(d).cast("date"))


def _read_inputs(spark: SparkSession, cfg: AppConfig, dates: list[dt.date]) -> _Inputs:
    """The landing events of ``dates`` (a backfill skips dates without input) and, point in time, the catalog
    of each processed date and of the last one."""
    storage = cfg.storage
    raw = landing.read_events(spark, storage.raw_events, dates, storage.input_format, allow_missing=len(dates) > 1)
    processed = sorted({str(r[S.DS]) for r in raw.select(S.DS).distinct().collect()})
    if not processed:
        span = dates[0].isoformat() + (f"..{dates[-1]}" if len(dates) > 1 else "")
        raise InputDataError(f"no events for {span}: the landing files hold only blank lines")
    catalog_dates = sorted({*processed, dates[-1].isoformat()})
    ads_parsed = clean.parse_ads(
        landing.read_ads(spark, storage.raw_ads, [dt.date.fromisoformat(d) for d in catalog_dates],
                         storage.input_format), ds=None, text_max_chars=cfg.etl.text_max_chars
    ).persist(StorageLevel.MEMORY_AND_DISK)
    return _Inputs(raw, processed, catalog_dates, ads_parsed, clean.clean_ad_rows(ads_parsed))


def _marked_events(spark: SparkSession, cfg: AppConfig, start: dt.date, inp: _Inputs) -> DataFrame:
    """Every input event with its status (clean, rejected with a reason, duplicate): persisted."""
    etl = cfg.etl
    parsed = clean.parse_events(inp.raw, text_max_chars=etl.text_max_chars,
                                max_clock_skew_minutes=etl.max_clock_skew_minutes)
    parsed = clean.reject_unknown_ads(parsed, inp.ads_clean)
    marked = clean.mark_duplicates(parsed, _previous_event_ids(spark, cfg, start, inp.processed))
    return clean.reject_events_without_impression(
        marked, _previous_impressions(spark, cfg, start, inp.processed), attribution_hours=etl.attribution_hours,
        lookback_days=etl.lookback_days).persist(StorageLevel.MEMORY_AND_DISK)


def _account(raw: DataFrame, marked: DataFrame, cfg: AppConfig) -> dict[str, DayMetrics]:
    """Per date: input = clean + rejected + duplicates (an :class:`AccountingError` otherwise), and the rejected
    share checked against ``etl.max_rejected_fraction`` before anything is written."""
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
    _check_rejected_fraction(days, max_fraction=cfg.etl.max_rejected_fraction, on_excess=cfg.etl.on_rejected_excess)
    return days


def _catalog_counts(ads_parsed: DataFrame, as_of: str) -> tuple[int, dict[str, int]]:
    """The last date's catalog: its row count and its rejected rows by reason."""
    latest = ads_parsed.where(F.col(S.DS) == F.lit(as_of).cast("date"))
    reasons = {r[S.REASON]: int(r["count"]) for r in
               latest.where(F.col(clean.STATUS) == clean.REJECTED).groupBy(S.REASON).count().collect()}
    total = latest.count()
    log.info("ad catalog %s: %d rows = %d clean + %d rejected %s", as_of, total, total - sum(reasons.values()),
             sum(reasons.values()), reasons)
    return total, reasons


def _run_etl(spark: SparkSession, cfg: AppConfig, start: dt.date, end: dt.date | None) -> EtlResult:
    watch = Stopwatch()
    dates = tables.date_range(start, end or start)
    inp = _read_inputs(spark, cfg, dates)
    marked = _marked_events(spark, cfg, start, inp)
    days = _account(inp.raw, marked, cfg)
    as_of = dates[-1].isoformat()
    ads_total, ads_reasons = _catalog_counts(inp.ads_parsed, as_of)
    # Six tables, one commit each: an error before the last one (etl_runs, the day's record) puts back
    # the partitions already replaced.
    with tables.partition_unit(spark, cfg.storage) as unit:
        _write_events(unit, marked, inp)
        _write_features(unit, spark, cfg, inp, days, as_of)
        users = tables.read_table(spark, cfg.storage, S.USER_PROFILES).where(
            F.col(S.DS) == F.lit(as_of).cast("date")).count()
        inp.ads_parsed.unpersist()
        result = EtlResult(dates=inp.processed, days=days, ads_input=ads_total,
                           ads_clean=ads_total - sum(ads_reasons.values()), ads_rejected_by_reason=ads_reasons,
                           users_profiled=users, seconds=watch.elapsed())
        _write_run_log(unit, result)
    log.info("ETL %s..%s: %d input rows, %d clean, %d rejected, %d duplicates, %d training examples, "
             "%d users, %.1fs (%.0f events/s)", inp.processed[0], inp.processed[-1], result.input_rows,
             result.clean_rows, result.rejected_rows, result.duplicate_rows, result.training_examples,
             users, result.seconds, result.input_rows / max(result.seconds, 1e-9))
    return result


def _write_events(unit: tables.PartitionUnit, marked: DataFrame, inp: _Inputs) -> None:
    """``events_clean`` of the processed dates and ``events_rejected`` (events and catalog rows, with reasons)."""
    unit.write(clean.clean_event_rows(marked), S.EVENTS_CLEAN, partition_col=S.DS, values=inp.processed)
    rejected = clean.rejected_rows(marked, "events").unionByName(clean.rejected_rows(inp.ads_parsed, "ads"))
    unit.write(rejected, S.EVENTS_REJECTED, partition_col=S.DS, values=inp.catalog_dates)
    marked.unpersist()


def _write_features(unit: tables.PartitionUnit, spark: SparkSession, cfg: AppConfig, inp: _Inputs,
                    days: dict[str, DayMetrics], as_of: str) -> None:
    """``training_examples`` (counted into ``days``), ``user_profiles`` as of ``as_of`` and the ``ads`` snapshots,
    from the clean events read back. Each date sees what a nightly run for it sees: the events landed in its own
    look-back window and its own catalog, so a backfill equals nightly runs. No split here: the training job
    splits the whole training data by time (:mod:`adrec_spark.training.split`). ``merge_schema``: tables written
    by an earlier release gain the columns added since (the history texts by kind, the content hashes), null in
    their older dates."""
    etl = cfg.etl
    examples = _training_examples(spark, cfg, inp.processed, inp.catalog).persist(StorageLevel.MEMORY_AND_DISK)
    unit.write(examples, S.TRAINING_EXAMPLES, partition_col=S.DS, values=inp.processed, merge_schema=True)
    for r in examples.groupBy(S.DS).count().collect():
        days[str(r[S.DS])].training_examples = int(r["count"])
    examples.unpersist()
    profiles = features.user_profiles(_lookback_window(spark, cfg, as_of), inp.catalog(as_of), as_of=as_of,
                                      max_items=etl.history_max_items, max_chars=etl.history_max_chars)
    unit.write(profiles, S.USER_PROFILES, partition_col=S.DS, values=[as_of], merge_schema=True)
    dates = inp.catalog_dates
    snapshots = features.ad_snapshots(inp.ads_clean, _lookback_window(spark, cfg, dates[-1], dates[0]),
                                      lookback_days=etl.lookback_days)
    unit.write(snapshots, S.ADS, partition_col=S.DS, values=dates, merge_schema=True)


def _write_run_log(unit: tables.PartitionUnit, result: EtlResult) -> None:
    """One row per processed date in ``etl_runs`` (replaced on rerun): the job's accounting metrics."""
    rows = [(dt.date.fromisoformat(m.ds), m.input_rows, m.clean_rows, m.rejected_rows, m.duplicate_rows,
             {k: int(v) for k, v in m.rejected_by_reason.items()}, m.training_examples, result.seconds)
            for m in result.days.values()]
    df = unit.spark.createDataFrame(rows, "ds date, input_rows long, clean_rows long, rejected_rows long, "
                                     "duplicate_rows long, rejected_by_reason map<string,long>, "
                                     "training_examples long, run_seconds double")
    unit.write(df, S.ETL_RUNS, partition_col=S.DS, values=result.dates)
