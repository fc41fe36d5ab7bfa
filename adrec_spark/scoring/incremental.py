"""Incremental nightly scoring: which earlier results a night may reuse, and the record of what it built on.

The model's pair logit is the sum of a text part and a numeric part (its head is linear over the pooled
encoder output and the numeric MLP side by side: :meth:`RelevanceModel.text_logit`). The text part, the
expensive cross-encoder pass, depends on the ad's text and the user's history text alone; the numeric part
(counts, rates, price, category affinity, which move whenever an ad is shown) costs a small MLP. So a pair
whose ad text and history text equal those of the previous date, scored by the same model with the same
:func:`score_settings`, carries its text logit over (``user_ad_scores.text_logit``), and every pair's score
is recomputed from tonight's numeric features. Reuse is keyed by the text input itself (the hashes of the ad
text and the history text), not by the pair: only text inputs the previous night did not see go to the
cross-encoder, so a user whose counts moved but whose history did not, or a new user without history, costs
no encoder pass.

The candidate cascade and the re-rank still run for every user, so candidate sets, top-K and reasons are those
of a full run by construction, and ads that left the catalog or whose flight ended are gone from every list.
The cascade's one costly part, an encoder pass per user for the retrieval embedding, carries over the same
way: each date's embeddings are kept in ``user_embeddings`` with the hash of the text embedded, and a user
whose retrieval text the base date embedded with the same model takes that embedding (:func:`base_embeddings`).

The ETL's ``content_hash`` of every user profile and ad snapshot (:func:`adrec_spark.etl.features.
with_content_hash`) counts what changed at all (``changes`` in the log and ``scoring_runs``); texts are
matched by their SHA-256 (:func:`text_hashes`).

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

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

import adrec_spark
from adrec_spark import schema as S
from adrec_spark.config import AppConfig
from adrec_spark.frames import require_columns
from adrec_spark.io import tables

log = logging.getLogger(__name__)

FULL, INCREMENTAL = "full", "incremental"
NEW, CHANGED, UNCHANGED, GONE = "new", "changed", "unchanged", "gone"
REUSED = "reused_text_logit"

RUNS_COLUMNS = (
    (S.SCORE_DATE, "date"), ("mode", "string"), ("base_date", "date"), ("fallback_reason", "string"),
    (S.MODEL_NAME, "string"), (S.MODEL_VERSION, "int"), ("score_settings", "string"),
    ("settings_fingerprint", "string"), ("user_profiles_version", "long"), ("ads_version", "long"),
    ("base_scores_version", "long"), ("base_user_profiles_version", "long"), ("base_ads_version", "long"),
    ("pairs", "long"), ("pairs_reused", "long"), ("inputs_scored", "long"), ("changes", "map<string,long>"),
    ("seconds", "double"), ("finished_at", "timestamp"), ("base_embeddings_version", "long"),
    ("embeddings_reused", "long"))


def score_settings(cfg: AppConfig, model_name: str, model_version: int, *, precision: str) -> dict[str, Any]:
    """What, besides a pair's user and ad rows, decides its score: the model version (its weights, tokenizer
    and ``max_length`` come with it), the precision it runs in (the one the job runs, ``auto`` decided), the
    smoothing of the rate features, and the package version (the definition of the features). Candidate and
    re-rank settings are not here: both run in full every night. Batch sizes only move bf16 rounding and are
    left out."""
    return {"model_name": model_name, "model_version": int(model_version), "precision": precision,
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


AD_TEXT_HASH, HISTORY_TEXT_HASH = "ad_text_hash", "history_text_hash"


def text_hash(text: str) -> Column:
    """The SHA-256 of the column ``text`` (a null text hashed as the empty one, which is what the model reads for
    it): how every reuse keys a text."""
    return F.sha2(F.coalesce(F.col(text), F.lit("")), 256)


def text_hashes(df: DataFrame, *, key: str, text: str, out: str) -> DataFrame:
    """``(key, out)``: the :func:`text_hash` of each row's ``text``."""
    require_columns(df, (key, text), "text_hashes")
    return df.select(key, text_hash(text).alias(out))


def base_text_logits(base_scores: DataFrame, *, user_hashes: DataFrame, ad_hashes: DataFrame) -> DataFrame:
    """``(ad_text_hash, history_text_hash, text_logit)``: every text input the base date sent through the
    cross-encoder, once each. ``base_scores``: ``(user_id, ad_id, text_logit)`` keyed by the output id;
    ``user_hashes``: ``(user_id, history_text_hash)`` under that same id; ``ad_hashes``: ``(ad_id,
    ad_text_hash)`` of the base date."""
    require_columns(base_scores, (S.USER_ID, S.AD_ID, S.TEXT_LOGIT), "base_text_logits")
    require_columns(user_hashes, (S.USER_ID, HISTORY_TEXT_HASH), "base_text_logits (users)")
    require_columns(ad_hashes, (S.AD_ID, AD_TEXT_HASH), "base_text_logits (ads)")
    return (base_scores.where(F.col(S.TEXT_LOGIT).isNotNull()).join(user_hashes, S.USER_ID).join(ad_hashes, S.AD_ID)
            .select(AD_TEXT_HASH, HISTORY_TEXT_HASH, S.TEXT_LOGIT)
            .dropDuplicates([AD_TEXT_HASH, HISTORY_TEXT_HASH]))


def with_reused_text_logits(pairs: DataFrame, *, user_hashes: DataFrame, ad_hashes: DataFrame,
                            base_logits: DataFrame) -> DataFrame:
    """``pairs`` plus ``reused_text_logit``: the base date's text logit of the pair's (ad text, history text)
    when the base sent that text input through the cross-encoder, whichever user and ad it came from (a user
    whose counts moved but whose history text did not, a new user without history like yesterday's); null for
    every pair to send to the cross-encoder tonight. ``user_hashes``/``ad_hashes``: tonight's texts
    (:func:`text_hashes`); ``base_logits``: :func:`base_text_logits`."""
    require_columns(pairs, (S.USER_ID, S.AD_ID), "with_reused_text_logits")
    require_columns(user_hashes, (S.USER_ID, HISTORY_TEXT_HASH), "with_reused_text_logits (users)")
    require_columns(ad_hashes, (S.AD_ID, AD_TEXT_HASH), "with_reused_text_logits (ads)")
    require_columns(base_logits, (AD_TEXT_HASH, HISTORY_TEXT_HASH, S.TEXT_LOGIT), "with_reused_text_logits (base)")
    reusable = (pairs.select(S.USER_ID, S.AD_ID).distinct().join(user_hashes, S.USER_ID).join(ad_hashes, S.AD_ID)
                .join(base_logits, [AD_TEXT_HASH, HISTORY_TEXT_HASH])
                .select(S.USER_ID, S.AD_ID, F.col(S.TEXT_LOGIT).alias(REUSED)))
    return pairs.join(reusable, [S.USER_ID, S.AD_ID], "left")


RETRIEVAL_TEXT_HASH, EMBEDDING, EMBEDDING_REUSED = "retrieval_text_hash", "embedding", "embedding_reused"


def base_embeddings(base: DataFrame, *, model_name: str, model_version: int) -> DataFrame:
    """``(retrieval_text_hash, embedding)``: each retrieval text the base date embedded with this model, once.
    ``base``: the base date's ``user_embeddings`` rows."""
    require_columns(base, (RETRIEVAL_TEXT_HASH, EMBEDDING, S.MODEL_NAME, S.MODEL_VERSION), "base_embeddings")
    same_model = (F.col(S.MODEL_NAME) == model_name) & (F.col(S.MODEL_VERSION) == model_version)
    return (base.where(same_model & F.col(EMBEDDING).isNotNull()).select(RETRIEVAL_TEXT_HASH, EMBEDDING)
            .dropDuplicates([RETRIEVAL_TEXT_HASH]))


def change_counts(user_changes: DataFrame, ad_changes: DataFrame) -> dict[str, int]:
    """``{'users_new': 3, 'ads_changed': 5, ...}`` for the log and ``scoring_runs``, counted in one Spark job."""
    both = user_changes.select(F.concat(F.lit("users_"), "change").alias("k")).unionByName(
        ad_changes.select(F.concat(F.lit("ads_"), "change").alias("k")))
    return {r["k"]: int(r["count"]) for r in both.groupBy("k").count().collect()}


def runs_row(spark: SparkSession, record: Mapping[str, Any]) -> DataFrame:
    """The ``scoring_runs`` row of one run (``record``: its columns by name, see ``RUNS_COLUMNS``)."""
    missing = sorted({n for n, _ in RUNS_COLUMNS} - set(record))
    if missing:
        raise ValueError(f"runs_row: missing {missing}")
    schema = ", ".join(f"{n} {t}" for n, t in RUNS_COLUMNS)
    return spark.createDataFrame([tuple(record[n] for n, _ in RUNS_COLUMNS)], schema)
