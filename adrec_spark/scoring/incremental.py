"""Incremental nightly scoring: which earlier scores a night may reuse, and the record of what it built on.

A pair's score is a function of its model input: the user's profile row (history text, counts, clicks per
category), the ad's row (text, category, price, counts), the model version and the settings that turn those
rows into features. The ETL writes a ``content_hash`` of every user profile and every ad snapshot
(:func:`adrec_spark.etl.features.with_content_hash`), so a pair whose user and ad hashes equal those of the
previous date, scored by the same model with the same :func:`score_settings`, has the same input: its score is
carried over and only the other pairs go to the cross-encoder. The candidate cascade and the re-rank still
run for every user (they are cheap next to the cross-encoder), so candidate sets, top-K and reasons are those
of a full run by construction, and ads that left the catalog or whose flight ended are gone from every list.

Each scored date gets a row in ``scoring_runs`` (written last, in the run's partition unit): its mode, the
date and table versions it built on, and why it fell back to a full run when it did. The previous date's
inputs are read at the versions its own run read (Delta time travel), so a rerun of the ETL for that date
after it was scored cannot pair its scores with other inputs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import adrec_spark
from adrec_spark import schema as S
from adrec_spark.config import AppConfig
from adrec_spark.frames import require_columns
from adrec_spark.io import tables

log = logging.getLogger(__name__)

FULL, INCREMENTAL = "full", "incremental"
NEW, CHANGED, UNCHANGED, GONE = "new", "changed", "unchanged", "gone"
REUSED_SCORE = "reused_score"

RUNS_COLUMNS = (
    (S.SCORE_DATE, "date"), ("mode", "string"), ("base_date", "date"), ("fallback_reason", "string"),
    (S.MODEL_NAME, "string"), (S.MODEL_VERSION, "int"), ("score_settings", "string"),
    ("settings_fingerprint", "string"), ("user_profiles_version", "long"), ("ads_version", "long"),
    ("base_scores_version", "long"), ("base_user_profiles_version", "long"), ("base_ads_version", "long"),
    ("pairs", "long"), ("pairs_reused", "long"), ("inputs_scored", "long"), ("changes", "map<string,long>"),
    ("seconds", "double"), ("finished_at", "timestamp"))


def score_settings(cfg: AppConfig, model_name: str, model_version: int) -> dict[str, Any]:
    """What, besides a pair's user and ad rows, decides its score: the model version (its weights, tokenizer
    and ``max_length`` come with it), the precision it runs in, the smoothing of the rate features, and the
    package version (the definition of the features). Candidate and re-rank settings are not here: both run
    in full every night. Batch sizes only move bf16 rounding and are left out."""
    return {"model_name": model_name, "model_version": int(model_version), "precision": cfg.score.precision,
            "rate_prior": cfg.etl.rate_prior, "rate_prior_strength": cfg.etl.rate_prior_strength,
            "package_version": adrec_spark.__version__}


def fingerprint(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BaseRun:
    """The previous date's ``scoring_runs`` row an incremental run builds on."""

    score_date: dt.date
    model_version: int
    settings: dict[str, Any]
    user_profiles_version: int
    ads_version: int


@dataclass(frozen=True)
class Plan:
    mode: str  # FULL or INCREMENTAL
    base: BaseRun | None
    reason: str  # why a full run ('' for incremental)


def plan_run(score_date: dt.date, runs: Sequence[BaseRun], settings: Mapping[str, Any], *, requested: str,
             forced_full: bool = False) -> Plan:
    """Incremental on the run of the day before ``score_date`` when it exists and used the same model and
    settings; otherwise full, with the reason. ``runs``: the completed runs of earlier dates."""
    if forced_full:
        return Plan(FULL, None, "--full given")
    if requested == FULL:
        return Plan(FULL, None, "score.mode is full")
    earlier = sorted((r for r in runs if r.score_date < score_date), key=lambda r: r.score_date)
    if not earlier:
        return Plan(FULL, None, f"no scored date before {score_date}")
    previous = score_date - dt.timedelta(days=1)
    base = earlier[-1]
    if base.score_date != previous:
        return Plan(FULL, None, f"no completed scoring run for {previous} (a failed or skipped night; the last "
                                f"scored date is {base.score_date})")
    if base.model_version != settings["model_version"] or base.settings.get("model_name") != settings["model_name"]:
        return Plan(FULL, None, f"model changed since {previous}: {base.settings.get('model_name')} "
                                f"v{base.model_version} -> {settings['model_name']} v{settings['model_version']}")
    moved = sorted(k for k in {*base.settings, *settings} if base.settings.get(k) != settings.get(k))
    if moved:
        return Plan(FULL, None, "settings that change scores differ from " + str(previous) + ": " + ", ".join(
            f"{k} {base.settings.get(k)!r} -> {settings.get(k)!r}" for k in moved))
    return Plan(INCREMENTAL, base, "")


def read_runs(spark: SparkSession, cfg: AppConfig, before: dt.date) -> list[BaseRun]:
    """The completed runs of the dates before ``before`` (none when the table does not exist yet)."""
    if tables.table_version(spark, cfg.storage, S.SCORING_RUNS) is None:
        return []
    rows = (tables.read_table(spark, cfg.storage, S.SCORING_RUNS)
            .where(F.col(S.SCORE_DATE) < F.lit(before.isoformat()).cast("date"))
            .select(S.SCORE_DATE, S.MODEL_VERSION, "score_settings", "user_profiles_version", "ads_version")
            .collect())
    return [BaseRun(r[S.SCORE_DATE], int(r[S.MODEL_VERSION]), json.loads(r["score_settings"]),
                    int(r["user_profiles_version"]), int(r["ads_version"])) for r in rows]


def compare_snapshots(current: DataFrame, base: DataFrame, *, key: str) -> DataFrame:
    """``(key, change)`` for every key of either snapshot: ``new`` (only in ``current``), ``gone`` (only in
    ``base``), ``changed`` (content hashes differ) or ``unchanged``. Both frames have ``key`` and
    ``content_hash``, one row per key."""
    require_columns(current, (key, S.CONTENT_HASH), "compare_snapshots")
    require_columns(base, (key, S.CONTENT_HASH), "compare_snapshots (base)")
    now = current.select(key, F.col(S.CONTENT_HASH).alias("_now"), F.lit(True).alias("_in_now"))
    then = base.select(key, F.col(S.CONTENT_HASH).alias("_then"), F.lit(True).alias("_in_then"))
    change = (F.when(F.col("_in_then").isNull(), F.lit(NEW)).when(F.col("_in_now").isNull(), F.lit(GONE))
              .when(F.col("_now") == F.col("_then"), F.lit(UNCHANGED)).otherwise(F.lit(CHANGED)))
    # a null hash on both sides is not "unchanged": an unknown content is never taken as equal
    return now.join(then, key, "full_outer").select(key, change.alias("change"))


def with_reused_scores(pairs: DataFrame, *, user_changes: DataFrame, ad_changes: DataFrame,
                       user_keys: DataFrame, base_scores: DataFrame) -> DataFrame:
    """``pairs`` plus ``reused_score``: the base date's score of the pair when its user and its ad are both
    unchanged (:func:`compare_snapshots`) and the base scored that pair; null for every pair to score.
    ``user_keys``: ``(user_id, _key)``, the id the output tables hold (pseudonymous or not), which
    ``base_scores`` (``user_id``, ``ad_id``, ``score``) is keyed by."""
    require_columns(pairs, (S.USER_ID, S.AD_ID), "with_reused_scores")
    require_columns(user_changes, (S.USER_ID, "change"), "with_reused_scores (user changes)")
    require_columns(ad_changes, (S.AD_ID, "change"), "with_reused_scores (ad changes)")
    require_columns(user_keys, (S.USER_ID, "_key"), "with_reused_scores (user keys)")
    require_columns(base_scores, (S.USER_ID, S.AD_ID, S.SCORE), "with_reused_scores (base scores)")
    same_users = (user_changes.where(F.col("change") == UNCHANGED).select(S.USER_ID)
                  .join(user_keys.select(S.USER_ID, "_key"), S.USER_ID))
    same_ads = ad_changes.where(F.col("change") == UNCHANGED).select(S.AD_ID)
    base = base_scores.select(F.col(S.USER_ID).alias("_key"), S.AD_ID, F.col(S.SCORE).alias(REUSED_SCORE))
    reusable = (pairs.select(S.USER_ID, S.AD_ID).distinct().join(same_users, S.USER_ID)
                .join(same_ads, S.AD_ID).join(base, ["_key", S.AD_ID]).select(S.USER_ID, S.AD_ID, REUSED_SCORE))
    return pairs.join(reusable, [S.USER_ID, S.AD_ID], "left")


def change_counts(user_changes: DataFrame, ad_changes: DataFrame) -> dict[str, int]:
    """``{'users_new': 3, 'ads_changed': 5, ...}`` for the log and ``scoring_runs``."""
    out: dict[str, int] = {}
    for what, df in (("users", user_changes), ("ads", ad_changes)):
        for r in df.groupBy("change").count().collect():
            out[f"{what}_{r['change']}"] = int(r["count"])
    return out


def runs_row(spark: SparkSession, record: Mapping[str, Any]) -> DataFrame:
    """The ``scoring_runs`` row of one run (``record``: its columns by name, see ``RUNS_COLUMNS``)."""
    missing = sorted({n for n, _ in RUNS_COLUMNS} - set(record))
    if missing:
        raise ValueError(f"runs_row: missing {missing}")
    schema = ", ".join(f"{n} {t}" for n, t in RUNS_COLUMNS)
    return spark.createDataFrame([tuple(record[n] for n, _ in RUNS_COLUMNS)], schema)
