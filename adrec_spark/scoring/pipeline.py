"""The nightly scoring job: user profiles and ads of a date -> candidates -> cross-encoder in a pandas UDF
-> ``user_ad_scores`` -> diversity re-rank with reasons -> ``recommendations``.

The model alias is resolved once on the driver and pinned for the whole run; each output row carries the
model name and version. Each table's date partition is replaced in one atomic Delta commit; an error after
the scores are written puts them back (:func:`tables.partition_unit`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from py4j.protocol import Py4JJavaError
from pyspark import Broadcast, StorageLevel
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from adrec_spark import schema as S
from adrec_spark.config import AppConfig
from adrec_spark.errors import InputDataError
from adrec_spark.etl import features
from adrec_spark.frames import require_columns
from adrec_spark.io import tables
from adrec_spark.logs import Stopwatch
from adrec_spark.model_udf import (
    PreparedModel,
    TextEncoder,
    UdfSettings,
    model_udf,
    prepare_model,
    resolve_model,
    text_encoder,
    token_columns,
    with_token_ids,
)
from adrec_spark.progress import progress
from adrec_spark.registry import registry
from adrec_spark.scoring import candidates as C
from adrec_spark.scoring import incremental as inc
from adrec_spark.scoring.rerank import AdInfo, rerank_group
from adrec_spark.scoring.stages import (
    AD_INDEX_FIELDS,
    ad_index_partition,
    check_profile_supported,
    finish_scores,
    scoring_profile,
    text_logits,
)
from adrec_spark.scoring.text_similarity import (
    collect_text_vectors,
    require_history_texts,
    uses_text_similarity,
    with_text_similarity,
)

log = logging.getLogger(__name__)

CANDIDATE_SCHEMA = "user_id string, ad_id string, source string"
RECS_SCHEMA = "user_id string, rank int, ad_id string, score double, reason string, strategy string"
EMBEDDINGS_SCHEMA = (f"{S.SCORE_DATE} date, {S.USER_ID} string, {inc.RETRIEVAL_TEXT_HASH} string, "
                     f"{inc.EMBEDDING} array<float>, {S.MODEL_NAME} string, {S.MODEL_VERSION} int")


@dataclass
class ScoringResult:
    score_date: str
    model_name: str
    model_version: int
    users: int
    users_by_strategy: dict[str, int]
    eligible_ads: int
    pairs_scored: int
    all_pairs: int
    recommendations: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # Distinct text inputs the cross-encoder scored: pairs with the same (ad text, history text) are scored once.
    inputs_scored: int | None = None
    # Pairs whose text logit carried over from the previous date (incremental mode), users whose retrieval
    # embedding did, and what the run built on.
    pairs_reused: int = 0
    embeddings_reused: int = 0
    mode: str = "full"
    base_date: str | None = None
    fallback_reason: str = ""
    built_on: dict[str, int] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_scored / max(self.seconds, 1e-9)

    @property
    def pairs_saved(self) -> int:
        """Pairs scored tonight whose score was joined from an identical input instead of scored again."""
        return 0 if self.inputs_scored is None else self.pairs_scored - self.pairs_reused - self.inputs_scored

    def lineage(self) -> str:
        """One line: the mode, and the date and table versions an incremental run built on (or why full)."""
        if self.mode != "incremental":
            return f"full run ({self.fallback_reason})"
        versions = ", ".join(f"{k} v{v}" for k, v in self.built_on.items())
        return (f"incremental on {self.base_date} ({versions}): {self.pairs_reused} pairs and "
                f"{self.embeddings_reused} user embeddings carried over; changes {self.changes}")


def with_strategy(users: DataFrame) -> DataFrame:
    """``strategy``: personalized (has history), query (only searches), popular (nothing yet); and the text
    the user is matched on."""
    require_columns(users, (S.USER_ID, S.HISTORY_TEXT, "recent_queries"), "with_strategy")
    has_history = F.length(F.coalesce(F.col(S.HISTORY_TEXT), F.lit(""))) > 0
    has_queries = F.size(F.coalesce(F.col("recent_queries"), F.array().cast("array<string>"))) > 0
    strategy = (F.when(has_history, F.lit(C.PERSONALIZED)).when(has_queries, F.lit(C.QUERY))
                .otherwise(F.lit(C.POPULAR)))
    text = F.when(has_history, F.col(S.HISTORY_TEXT)).otherwise(
        F.array_join(F.transform("recent_queries", lambda q: F.concat(F.lit("searched: "), q)), " | "))
    return users.withColumn(S.STRATEGY, strategy).withColumn("retrieval_text", text)


def shown_categories(events: DataFrame, ads: DataFrame) -> DataFrame:
    """``(user_id, shown_categories)``: per user, impressions per category of the ads shown (events of ads not
    in ``ads`` count under ``unknown``)."""
    require_columns(events, (S.USER_ID, S.AD_ID, S.EVENT_TYPE), "shown_categories")
    require_columns(ads, (S.AD_ID, S.CATEGORY), "shown_categories (ads)")
    shown = (events.where(F.col(S.EVENT_TYPE) == S.IMPRESSION).select(S.USER_ID, S.AD_ID)
             .join(ads.select(S.AD_ID, S.CATEGORY).dropDuplicates([S.AD_ID]), S.AD_ID, "left"))
    return (shown.groupBy(S.USER_ID, F.coalesce(S.CATEGORY, F.lit("unknown")).alias(S.CATEGORY)).count()
            .groupBy(S.USER_ID)
            .agg(F.map_from_entries(F.collect_list(F.struct(S.CATEGORY, "count"))).alias("shown_categories")))


def with_shown_categories(users: DataFrame, shown: DataFrame) -> DataFrame:
    """Users without history or searches (``popular``) who were shown ads become ``shown``, with the
    categories of those impressions in ``shown_categories`` (null for everyone else)."""
    require_columns(users, (S.USER_ID, S.STRATEGY), "with_shown_categories")
    require_columns(shown, (S.USER_ID, "shown_categories"), "with_shown_categories (shown)")
    cold = F.col(S.STRATEGY) == C.POPULAR
    joined = users.join(shown.withColumnRenamed("shown_categories", "_shown"), S.USER_ID, "left")
    has_shown = cold & F.col("_shown").isNotNull() & (F.size("_shown") > 0)
    return (joined.withColumn("shown_categories", F.when(has_shown, F.col("_shown")))
            .withColumn(S.STRATEGY, F.when(has_shown, F.lit(C.SHOWN)).otherwise(F.col(S.STRATEGY))).drop("_shown"))


def _cold_users(spark: SparkSession, cfg: AppConfig, users: DataFrame, score_date: dt.date) -> DataFrame:
    """``users`` with the ``shown`` strategy where it applies: impressions over the ETL look-back window up to
    ``score_date`` (read only for the users without history; the ``popular`` cold-start strategy skips it)."""
    if cfg.score.cold_start.strategy == "popular" or tables.table_version(spark, cfg.storage, S.EVENTS_CLEAN) is None:
        return users.withColumn("shown_categories", F.lit(None).cast("map<string,bigint>"))
    lo = F.lit((score_date - dt.timedelta(days=cfg.etl.lookback_days)).isoformat()).cast("date")
    hi = F.lit(score_date.isoformat()).cast("date")
    events = (tables.read_table(spark, cfg.storage, S.EVENTS_CLEAN)
              .where((F.col(S.DS) >= lo) & (F.col(S.DS) <= hi))
              .join(users.where(F.col(S.STRATEGY) == C.POPULAR).select(S.USER_ID), S.USER_ID, "left_semi"))
    ads = tables.read_table(spark, cfg.storage, S.ADS).where(F.col(S.DS) == hi)
    return with_shown_categories(users, shown_categories(events, ads))


def score_distinct_inputs(pairs: DataFrame, score: Callable[[DataFrame], DataFrame], *, input_cols: Sequence[str],
                          partitions: int, out_col: str = S.SCORE) -> DataFrame:
    """``pairs`` with ``out_col``: the model's output for each distinct model input, joined back to every pair
    with that input. ``score`` maps a frame holding ``input_cols`` (plus other columns it must keep) to the
    same rows with ``out_col`` (the scoring stage); pairs whose inputs are equal (e.g. an ad for every user
    without history: same ad, same empty history) are scored once. The join is null-safe, so a null input
    still gets its output."""
    require_columns(pairs, input_cols, "score_distinct_inputs")
    names = {c: f"_in{i}" for i, c in enumerate(input_cols)}
    distinct = (pairs.select(*input_cols).dropDuplicates()
                .select(*input_cols, *[F.col(c).alias(names[c]) for c in input_cols]).repartition(partitions))
    scored = score(distinct).select(*names.values(), out_col)
    cond = [pairs[c].eqNullSafe(scored[names[c]]) for c in input_cols]
    return pairs.join(scored, cond, "inner").drop(*names.values())


def eligible_ads(ads: DataFrame, serve_date: dt.date) -> DataFrame:
    """Ads whose flight dates include ``serve_date`` (open-ended flights always do)."""
    require_columns(ads, (S.AD_ID, S.START_DATE, S.END_DATE), "eligible_ads")
    d = F.lit(serve_date.isoformat()).cast("date")
    return ads.where((F.col(S.START_DATE).isNull() | (F.col(S.START_DATE) <= d))
                     & (F.col(S.END_DATE).isNull() | (F.col(S.END_DATE) >= d)))


def pair_features(pairs: DataFrame, users: DataFrame, ads: DataFrame, *, rate_prior: float,
                  rate_prior_strength: float, tokens: bool = False, text_vectors: Broadcast | None = None) -> DataFrame:
    """Model inputs per (user, ad) pair, with the same numeric features as training: the texts, or with
    ``tokens`` their token columns (:func:`with_token_ids`: prefix ``history`` on users, ``ad`` on ads). With
    ``text_vectors`` (:func:`text_similarity.collect_text_vectors` of these users and ads) also the
    text-similarity features, from the users' history texts by kind as of their profile."""
    require_columns(pairs, (S.USER_ID, S.AD_ID), "pair_features")
    hist, ad = (token_columns("history"), token_columns("ad")) if tokens else ([S.HISTORY_TEXT], [S.AD_TEXT])
    u_texts = list(S.HISTORY_ITEM_TEXTS) if text_vectors is not None else []
    a_text = [S.AD_TEXT] if text_vectors is not None and S.AD_TEXT not in ad else []
    u = users.select(S.USER_ID, *hist, features.USER_IMPRESSIONS, features.USER_CLICKS,
                     features.CATEGORY_CLICKS, *u_texts)
    a = ads.select(S.AD_ID, *ad, S.CATEGORY, S.PRICE, features.AD_IMPRESSIONS, features.AD_CLICKS, *a_text)
    df = pairs.join(u, S.USER_ID).join(a, S.AD_ID)
    feats = features.numeric_features(
        user_impressions=F.col(features.USER_IMPRESSIONS), user_clicks=F.col(features.USER_CLICKS),
        ad_impressions=F.col(features.AD_IMPRESSIONS), ad_clicks=F.col(features.AD_CLICKS),
        price=F.col(S.PRICE), category_clicks=F.try_element_at(features.CATEGORY_CLICKS, F.col(S.CATEGORY)),
        rate_prior=rate_prior, rate_prior_strength=rate_prior_strength)
    out = df.select(*pairs.columns, *hist, *ad, *feats, *u_texts, *a_text)
    if text_vectors is None:
        return out
    return with_text_similarity(out, vectors=text_vectors).drop(*u_texts, *a_text)


def text_vectors_of(users: DataFrame, ads: DataFrame, encoder: TextEncoder) -> Broadcast:
    """Each distinct text of the users' history texts by kind and of the ads' texts, embedded once."""
    require_history_texts(users, "user_profiles")
    empty = F.array().cast("array<string>")
    return collect_text_vectors(
        [users.select(F.lit(None).cast("string").alias(S.AD_TEXT), *S.HISTORY_ITEM_TEXTS),
         ads.select(S.AD_TEXT, *[empty.alias(c) for c in S.HISTORY_ITEM_TEXTS])], encoder)


def _neutral_user_features(ads: DataFrame, *, rate_prior: float, rate_prior_strength: float) -> DataFrame:
    """Ads with the features of a user about whom nothing is known: the input of the prior score (text
    similarity: no history texts, so the neutral 0 throughout)."""
    feats = features.numeric_features(
        user_impressions=F.lit(0), user_clicks=F.lit(0), ad_impressions=F.col(features.AD_IMPRESSIONS),
        ad_clicks=F.col(features.AD_CLICKS), price=F.col(S.PRICE), category_clicks=F.lit(0),
        rate_prior=rate_prior, rate_prior_strength=rate_prior_strength)
    return ads.select("*", *feats, *[F.lit(0.0).alias(c) for c in S.TEXT_SIMILARITY_FEATURES])


def build_ad_index(ads: DataFrame, cfg: AppConfig, settings: UdfSettings, *, with_prior: bool = True,
                   empty_message: str = "no eligible ads to index",
                   numeric_features: Sequence[str] = S.NUMERIC_FEATURES) -> tuple[C.AdIndex, AdInfo]:
    """Embed each eligible ad once and score its prior once per category-affinity level, in one pass over the
    ads spread across the executors' cores; the small result is collected to the driver and broadcast to the
    retrieval and re-rank tasks. Without ``with_prior`` (the ``all`` candidates mode) the prior is skipped.
    No ads at all is an :class:`InputDataError` with ``empty_message``."""
    spark = ads.sparkSession
    levels = [float(v) for v in C.affinity_levels(cfg.score.prior_affinity_levels)] if with_prior else None
    numeric = list(numeric_features)  # the model's, in its order
    body = partial(ad_index_partition, settings=settings, numeric_features=numeric,
                   match_feature=S.CATEGORY_MATCH, levels=levels)
    meta = (S.AD_ID, S.ADVERTISER_ID, S.TITLE, S.CATEGORY, features.AD_CLICKS,  # passed through as they are
            features.AD_IMPRESSIONS)
    etl = cfg.etl
    neutral = _neutral_user_features(ads, rate_prior=etl.rate_prior, rate_prior_strength=etl.rate_prior_strength)
    inputs = neutral.select(*meta, S.AD_TEXT, *[F.col(c).cast("float").alias(c) for c in numeric])
    schema = StructType(inputs.select(*meta).schema.fields + AD_INDEX_FIELDS)
    rows = (inputs.repartition(spark.sparkContext.defaultParallelism, S.AD_ID)
            .mapInPandas(body, schema).toPandas())
    if rows.empty:
        raise InputDataError(empty_message)
    prior = np.stack(rows["prior"].to_numpy()) if with_prior else np.zeros(len(rows))
    ucb = C.click_rate_ucb(rows[features.AD_CLICKS].to_numpy(), rows[features.AD_IMPRESSIONS].to_numpy(),
                           z=cfg.score.cold_start.ucb_z, prior=cfg.etl.rate_prior,
                           strength=cfg.etl.rate_prior_strength)
    index = C.build_index(rows[S.AD_ID].tolist(), np.stack(rows["embedding"].to_numpy()), prior,
                          rows[features.AD_CLICKS].to_numpy(), categories=rows[S.CATEGORY].astype(str).tolist(),
                          ucb=ucb)
    by_id = rows.set_index(S.AD_ID).loc[index.ad_ids]
    info = AdInfo(position=index.position, embeddings=index.embeddings,
                  advertiser=by_id[S.ADVERTISER_ID].astype(str).tolist(), title=by_id[S.TITLE].astype(str).tolist(),
                  category=by_id[S.CATEGORY].astype(str).tolist())
    return index, info


def embed_users(users: DataFrame, settings: UdfSettings, *, base: DataFrame | None = None) -> DataFrame:
    """``users`` with ``retrieval_text_hash``, ``embedding`` (the encoder's retrieval embedding of
    ``retrieval_text``; null for cold-start users, who are matched without one) and ``embedding_reused``. With
    ``base`` (:func:`inc.base_embeddings`) a text embedded before keeps that embedding, whichever user it was;
    only the others go through the encoder, spread over every core first (a date's profiles often sit in one
    file, hence one task, and each user costs an encoder pass)."""
    require_columns(users, (S.USER_ID, S.STRATEGY, "retrieval_text"), "embed_users")
    spark = users.sparkSession
    hashed = users.withColumn(inc.RETRIEVAL_TEXT_HASH, inc.text_hash("retrieval_text"))
    if base is None:
        hashed = hashed.withColumn("_base", F.lit(None).cast("array<float>"))
    else:
        hashed = hashed.join(base.withColumnRenamed(inc.EMBEDDING, "_base"), inc.RETRIEVAL_TEXT_HASH, "left")
    spread = hashed.repartition(spark.sparkContext.defaultParallelism, S.USER_ID)
    warm = ~F.col(S.STRATEGY).isin(*C.COLD_STRATEGIES)
    todo = warm & F.col("_base").isNull()
    # A pandas UDF inside a condition still runs on every row: the rows to embed are split off instead.
    embedded = (spread.where(todo)
                .withColumn(inc.EMBEDDING, model_udf(settings, output="embedding")(F.col("retrieval_text")))
                .withColumn(inc.EMBEDDING_REUSED, F.lit(False)))
    rest = (spread.where(~todo).withColumn(inc.EMBEDDING, F.when(warm, F.col("_base")))
            .withColumn(inc.EMBEDDING_REUSED, warm))
    return embedded.unionByName(rest).drop("_base")


def candidate_pairs(users: DataFrame, ads: DataFrame, index: C.AdIndex, cfg: AppConfig,
                    score_date: dt.date | None = None) -> DataFrame:
    """(user_id, ad_id, source) to score: the cascade over the users' embeddings (:func:`embed_users`), or
    every eligible pair the user has not clicked."""
    if cfg.score.candidates == "all":
        return (users.select(S.USER_ID, "clicked_ad_ids").crossJoin(ads.select(S.AD_ID))
                .where(~F.array_contains("clicked_ad_ids", F.col(S.AD_ID)))
                .select(S.USER_ID, S.AD_ID, F.lit("all").alias(S.SOURCE)))
    require_columns(users, (S.USER_ID, inc.EMBEDDING), "candidate_pairs (the cascade)")
    bindex = users.sparkSession.sparkContext.broadcast(index)
    sc = cfg.score
    cs = sc.cold_start
    cold = C.ColdStart(strategy=cs.strategy, pool_size=cs.pool_size, shown_fraction=cs.shown_fraction,
                       date=score_date.isoformat() if score_date else "")

    def body(frames):
        return C.retrieve_partition(frames, bindex.value, top_n=sc.retrieval_top_n, prior_n=sc.prior_top_n,
                                    popular_n=sc.popular_pool, cold=cold)

    shown = (F.col("shown_categories") if "shown_categories" in users.columns
             else F.lit(None).cast("map<string,bigint>"))
    return (users.select(S.USER_ID, inc.EMBEDDING, "clicked_ad_ids", S.STRATEGY,
                         F.col(features.CATEGORY_CLICKS).alias("category_clicks"),
                         F.col(features.USER_CLICKS).alias("user_clicks"), shown.alias("shown_categories"))
            .mapInPandas(body, CANDIDATE_SCHEMA))


def _user_key(cfg: AppConfig) -> F.Column:
    """The user id written to output tables: as is, or its salted hash when pseudonymous output is on."""
    if not cfg.privacy.pseudonymize_user_ids:
        return F.col(S.USER_ID)
    from adrec_spark.privacy import pseudonym_salt, pseudonymize

    return pseudonymize(F.col(S.USER_ID), pseudonym_salt(cfg.privacy))


def _read_users_and_model(spark: SparkSession, cfg: AppConfig, score_date: dt.date,
                          profiles_version: int | None) -> tuple[DataFrame, dict[str, int], registry.ResolvedModel]:
    """The date's users (with strategy) and their counts by strategy, read while the registry resolves the
    model (pinned once for the whole run)."""
    sc = cfg.score
    ds = F.lit(score_date.isoformat()).cast("date")
    tag = f"adrec-read-users-{uuid.uuid4().hex[:12]}"

    def count_users() -> tuple[DataFrame, dict[str, int]]:
        spark.sparkContext.addJobTag(tag)  # this thread's Spark jobs, so that an error can cancel them
        try:
            profiles = tables.read_table(spark, cfg.storage, S.USER_PROFILES, version=profiles_version)
            users = _cold_users(spark, cfg, with_strategy(profiles.where(F.col(S.DS) == ds)), score_date)
            return users, {r[S.STRATEGY]: int(r["count"]) for r in users.groupBy(S.STRATEGY).count().collect()}
        finally:
            spark.sparkContext.removeJobTag(tag)

    # The first Delta read of a fresh JVM takes seconds; it runs while the registry resolves the model (a read,
    # nothing written: an unknown alias is still the first error and comes before any write, and it cancels
    # that read instead of waiting for it).
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adrec-read-users")
    try:
        counting = pool.submit(count_users)
        try:
            model = resolve_model(cfg)
        except BaseException:
            # The read has started: cancel its Spark jobs (the pool's shutdown drops only unstarted futures).
            spark.sparkContext.cancelJobsWithTag(tag)
            raise
        log.info("scoring %s with %s v%d (pinned from %s)", score_date, model.name, model.version,
                 f"alias '{sc.model_alias}'" if sc.model_version is None else "an explicit version")
        users, by_strategy = counting.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return users, by_strategy, model


@dataclass
class _Reuse:
    """What an incremental run reuses: the text logits of every text input the previous date scored
    (:func:`inc.base_text_logits`, persisted), tonight's text hashes, the counts of what changed at all, and the
    previous date's retrieval embeddings."""

    base_logits: DataFrame
    user_hashes: DataFrame
    ad_hashes: DataFrame
    base_scores_version: int
    changes: dict[str, int]
    # The base date's retrieval embeddings by text (inc.base_embeddings), when its run kept them.
    base_embeddings: DataFrame | None = None
    base_embeddings_version: int | None = None


def _plan(spark: SparkSession, cfg: AppConfig, score_date: dt.date, users: DataFrame, ads: DataFrame,
          settings: dict, *, full: bool) -> tuple[inc.Plan, _Reuse | None]:
    """Full or incremental (and on what); a base whose inputs cannot be read makes it full, with the reason."""
    plan = inc.plan_run(score_date, inc.read_runs(spark, cfg, score_date), settings, requested=cfg.score.mode,
                        forced_full=full)
    reuse = None
    if plan.mode == inc.INCREMENTAL and plan.base is not None:
        try:
            reuse = _base_inputs(spark, cfg, plan.base, users, ads)
        except (InputDataError, PySparkException, Py4JJavaError) as e:  # e.g. vacuumed versions
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            plan = inc.Plan(inc.FULL, None, f"the inputs of {plan.base.score_date}'s run cannot be read ({first})")
    if plan.mode == inc.FULL:
        (log.info if full or cfg.score.mode == inc.FULL else log.warning)(
            "scoring %s: full run (%s)", score_date, plan.reason)
    else:
        log.info("scoring %s: incremental on %s (user_profiles v%d, ads v%d, user_ad_scores v%d); changes %s",
                 score_date, plan.base.score_date, plan.base.user_profiles_version, plan.base.ads_version,
                 reuse.base_scores_version, reuse.changes)
    return plan, reuse


def _base_inputs(spark: SparkSession, cfg: AppConfig, base: inc.BaseRun, users: DataFrame,
                 ads: DataFrame) -> _Reuse:
    """The base date's text logits by text input, from the table versions its run read, and tonight's texts."""
    bds = F.lit(base.score_date.isoformat()).cast("date")
    base_users = (tables.read_table(spark, cfg.storage, S.USER_PROFILES, version=base.user_profiles_version)
                  .where(F.col(S.DS) == bds))
    base_ads = tables.read_table(spark, cfg.storage, S.ADS, version=base.ads_version).where(F.col(S.DS) == bds)
    for name, df in (("user_profiles", users), ("ads", ads), (f"user_profiles of {base.score_date}", base_users),
                     (f"ads of {base.score_date}", base_ads)):
        if S.CONTENT_HASH not in df.columns:
            raise InputDataError(f"{name} has no {S.CONTENT_HASH} column (written before it existed: rerun the ETL)")
    # What changed at all, for the log and scoring_runs (reads both snapshots now: a vacuumed one fails here).
    changes = inc.change_counts(inc.compare_snapshots(users, base_users, key=S.USER_ID),
                                inc.compare_snapshots(ads, base_ads, key=S.AD_ID))
    version = tables.table_version(spark, cfg.storage, S.USER_AD_SCORES)
    if version is None:
        raise InputDataError(f"table '{S.USER_AD_SCORES}' not found")
    scores = tables.read_table(spark, cfg.storage, S.USER_AD_SCORES, version=version).where(F.col(S.SCORE_DATE) == bds)
    if S.TEXT_LOGIT not in scores.columns:
        raise InputDataError(f"{S.USER_AD_SCORES} of {base.score_date} has no {S.TEXT_LOGIT} (written by an earlier "
                             "release)")
    base_user_hashes = inc.text_hashes(base_users.withColumn(S.USER_ID, _user_key(cfg)), key=S.USER_ID,
                                       text=S.HISTORY_TEXT, out=inc.HISTORY_TEXT_HASH)
    base_logits = inc.base_text_logits(
        scores.select(S.USER_ID, S.AD_ID, S.TEXT_LOGIT), user_hashes=base_user_hashes,
        ad_hashes=inc.text_hashes(base_ads, key=S.AD_ID, text=S.AD_TEXT, out=inc.AD_TEXT_HASH))
    # The embeddings are a saving, not an input: a base without them (kept by an earlier release) embeds all.
    emb_version = tables.table_version(spark, cfg.storage, S.USER_EMBEDDINGS)
    embeddings = None if emb_version is None else inc.base_embeddings(
        tables.read_table(spark, cfg.storage, S.USER_EMBEDDINGS, version=emb_version).where(F.col(S.SCORE_DATE) == bds),
        model_name=base.settings["model_name"], model_version=base.model_version)
    return _Reuse(base_logits.persist(StorageLevel.MEMORY_AND_DISK),
                  inc.text_hashes(users, key=S.USER_ID, text=S.HISTORY_TEXT, out=inc.HISTORY_TEXT_HASH),
                  inc.text_hashes(ads, key=S.AD_ID, text=S.AD_TEXT, out=inc.AD_TEXT_HASH), version, changes,
                  embeddings, emb_version)


def _split_reusable(featured: DataFrame, reuse: _Reuse | None) -> tuple[DataFrame, DataFrame | None, list[DataFrame]]:
    """(pairs for the cross-encoder, pairs carrying the base's text logit or None, frames to unpersist at the
    end), both with every model input of ``featured``."""
    if reuse is None:
        return featured, None, []
    marked = inc.with_reused_text_logits(featured, user_hashes=reuse.user_hashes, ad_hashes=reuse.ad_hashes,
                                         base_logits=reuse.base_logits).persist(StorageLevel.MEMORY_AND_DISK)
    to_score = marked.where(F.col(inc.REUSED).isNull()).drop(inc.REUSED)
    carried = marked.where(F.col(inc.REUSED).isNotNull()).withColumnRenamed(inc.REUSED, S.TEXT_LOGIT)
    return to_score, carried, [marked, reuse.base_logits]


@dataclass
class _Night:
    """What one date's scoring reads: the table versions, the users (with strategy) and their counts by
    strategy, the pinned model, the ads eligible on the serving day."""

    score_date: dt.date
    versions: dict[str, int | None]
    users: DataFrame
    by_strategy: dict[str, int]
    model: registry.ResolvedModel
    ads: DataFrame

    @property
    def n_users(self) -> int:
        return sum(self.by_strategy.values())


def _read_night(spark: SparkSession, cfg: AppConfig, score_date: dt.date) -> _Night:
    """The date's users and model (:func:`_read_users_and_model`) and its eligible ads, at pinned table versions;
    no users is an :class:`InputDataError`."""
    versions = {t: tables.table_version(spark, cfg.storage, t) for t in (S.USER_PROFILES, S.ADS)}
    users, by_strategy, model = _read_users_and_model(spark, cfg, score_date, versions[S.USER_PROFILES])
    if sum(by_strategy.values()) == 0:
        raise InputDataError(f"no user profiles for {score_date}: nothing to score (run the ETL for that date)")
    ads = (tables.read_table(spark, cfg.storage, S.ADS, version=versions[S.ADS])
           .where(F.col(S.DS) == F.lit(score_date.isoformat()).cast("date")))
    return _Night(score_date, versions, users, by_strategy, model,
                  eligible_ads(ads, score_date + dt.timedelta(days=1)))


def run_scoring(spark: SparkSession, cfg: AppConfig, score_date: dt.date, *, full: bool = False) -> ScoringResult:
    """Score the users and ads of ``score_date`` (profiles as of the end of that day; ads eligible the next
    day, when the recommendations are served) and replace that date's partitions. With ``score.mode:
    incremental`` (unless ``full``) the pairs whose user and ad are unchanged since the day before keep that
    day's score (:mod:`adrec_spark.scoring.incremental`); ``scoring_runs`` records what the run built on."""
    watch = Stopwatch()
    with watch.stage("setup"):
        night = _read_night(spark, cfg, score_date)
        check_profile_supported(spark.sparkContext.master, cfg.score.gpu)
        # The accumulator counts the distinct inputs the UDF scored, for the progress lines.
        prepared = prepare_model(spark, cfg, night.model, progress=spark.sparkContext.accumulator(0), chaos=True)
        settings_used = inc.score_settings(cfg, night.model.name, night.model.version,
                                           precision=prepared.settings.precision)
        plan, reuse = _plan(spark, cfg, score_date, night.users, night.ads, settings_used, full=full)
    with watch.stage("ad_index"):
        # The index holds every eligible ad (collected to the driver): its size is their count, and no ads is an
        # error before anything is written.
        index, info = build_ad_index(night.ads, cfg, prepared.settings, with_prior=cfg.score.candidates != "all",
                                     numeric_features=prepared.numeric_features, empty_message=(
                                         f"no ads eligible on {score_date + dt.timedelta(days=1)} in the "
                                         f"{score_date} catalog"))
    with watch.stage("score_pairs"):
        # The cascade runs for every user (candidates equal a full run's); only the encoder passes of the users'
        # retrieval texts and of the pairs' text inputs that the day before already ran are skipped.
        users = night.users
        if cfg.score.candidates != "all":
            users = embed_users(users, prepared.settings, base=reuse.base_embeddings if reuse else None
                                ).persist(StorageLevel.MEMORY_AND_DISK)
        featured = model_inputs(candidate_pairs(users, night.ads, index, cfg, score_date), night.users, night.ads,
                                prepared, cfg)
        to_score, carried, cached = _split_reusable(featured, reuse)
        out, counts = _scores(to_score, carried, night.model, prepared, cfg, score_date)
        counts["embeddings_reused"] = (users.where(F.col(inc.EMBEDDING_REUSED)).count()
                                       if reuse is not None and reuse.base_embeddings is not None else 0)
    result = _write_outputs(spark, cfg, night, out, _embeddings_out(users, cfg, night.model, score_date), info,
                            prepared, counts, watch, cached=[users, featured, *cached],
                            record=dict(plan=plan, reuse=reuse, settings=settings_used))
    result.users, result.users_by_strategy, result.eligible_ads = night.n_users, night.by_strategy, len(index.ad_ids)
    result.all_pairs = night.n_users * len(index.ad_ids)
    log.info("scored %d pairs for %d users x %d ads (%s) in %.1fs (%.0f pairs/s end to end; stages %s); "
             "%d recommendations; %s", result.pairs_scored, night.n_users, result.eligible_ads, night.by_strategy,
             result.seconds, result.pairs_per_second, watch.rounded(), result.recommendations, result.lineage())
    return result


def model_inputs(pairs: DataFrame, users: DataFrame, ads: DataFrame, prepared: PreparedModel,
                 cfg: AppConfig) -> DataFrame:
    """``pairs`` with what the model reads (persisted: the distinct inputs are counted and scored from it, and
    the scores joined back to it). Each history and each ad text is tokenized once; the text-similarity
    features only when the model reads them."""
    numeric = prepared.numeric_features
    s = prepared.settings
    vectors = text_vectors_of(users, ads, text_encoder(cfg)) if uses_text_similarity(numeric) else None
    return pair_features(pairs, with_token_ids(users, s, text_col=S.HISTORY_TEXT, prefix="history"),
                         with_token_ids(ads, s, text_col=S.AD_TEXT, prefix="ad"), rate_prior=cfg.etl.rate_prior,
                         rate_prior_strength=cfg.etl.rate_prior_strength, tokens=True,
                         text_vectors=vectors).persist(StorageLevel.MEMORY_AND_DISK)


def _scores(to_score: DataFrame, carried: DataFrame | None, model: registry.ResolvedModel, prepared: PreparedModel,
            cfg: AppConfig, score_date: dt.date) -> tuple[DataFrame, dict[str, int]]:
    """``user_ad_scores``' rows and their counts (``inputs``: distinct text inputs sent to the cross-encoder;
    ``reused``: pairs whose text logit carried over). Each distinct (ad text, history text) of ``to_score`` goes
    through the cross-encoder stage once (the only stage that asks for GPUs, ``score.gpu``) and its text logit
    is joined back to its pairs; with the ``carried`` pairs, every pair's score is then the sigmoid of its text
    logit plus the numeric parts of tonight's features (the model's small numeric head, no encoder pass)."""
    numeric = prepared.numeric_features
    inputs = [*token_columns("ad"), *token_columns("history")]
    counts = {"inputs": to_score.select(*inputs).dropDuplicates().count(),
              "reused": carried.count() if carried is not None else 0}
    with_text = score_distinct_inputs(
        to_score, partial(text_logits, settings=prepared.settings, out_col=S.TEXT_LOGIT,
                          profile=scoring_profile(cfg.score.gpu)), input_cols=inputs,
        partitions=to_score.sparkSession.sparkContext.defaultParallelism * 2, out_col=S.TEXT_LOGIT,
    ).select(S.USER_ID, S.AD_ID, S.SOURCE, S.TEXT_LOGIT, *numeric)
    if carried is not None:
        with_text = with_text.unionByName(carried.select(S.USER_ID, S.AD_ID, S.SOURCE, S.TEXT_LOGIT, *numeric))
    scored = finish_scores(with_text, prepared.settings, numeric_features=numeric)
    out = scored.select(F.lit(score_date.isoformat()).cast("date").alias(S.SCORE_DATE),
                        _user_key(cfg).alias(S.USER_ID), S.AD_ID, S.SCORE,
                        F.col(S.SOURCE).alias("candidate_source"), F.lit(model.name).alias(S.MODEL_NAME),
                        F.lit(model.version).alias(S.MODEL_VERSION), F.col(S.TEXT_LOGIT).cast("float"))
    return out, counts


def _embeddings_out(users: DataFrame, cfg: AppConfig, model: registry.ResolvedModel,
                    score_date: dt.date) -> DataFrame:
    """``user_embeddings``' rows: the users' retrieval embeddings (none with ``score.candidates: all``, which
    embeds no user), under the output user id, with the hash of the text embedded and the model."""
    if inc.EMBEDDING not in users.columns:
        return users.sparkSession.createDataFrame([], EMBEDDINGS_SCHEMA)
    return (users.where(F.col(inc.EMBEDDING).isNotNull())
            .select(F.lit(score_date.isoformat()).cast("date").alias(S.SCORE_DATE), _user_key(cfg).alias(S.USER_ID),
                    inc.RETRIEVAL_TEXT_HASH, inc.EMBEDDING, F.lit(model.name).alias(S.MODEL_NAME),
                    F.lit(model.version).cast("int").alias(S.MODEL_VERSION)))


def _write_outputs(spark: SparkSession, cfg: AppConfig, night: _Night, out: DataFrame, embeddings: DataFrame,
                   info: AdInfo, prepared: PreparedModel, counts: dict[str, int], watch: Stopwatch, *,
                   cached: list[DataFrame], record: dict[str, Any]) -> ScoringResult:
    """Scores, retrieval embeddings, recommendations and the ``scoring_runs`` row (:func:`_record_run` with
    ``record``): four commits, one unit (an error before the last one puts back what was written)."""
    model, score_date, date = night.model, night.score_date, night.score_date.isoformat()
    ds = F.lit(date).cast("date")
    n_inputs, n_reused = counts["inputs"], counts["reused"]
    with tables.partition_unit(spark, cfg.storage) as unit:
        with watch.stage("score_pairs"):
            # The cross-encoder sees each distinct text input once: progress counts those against their number.
            with progress(spark, "scoring", total=n_inputs, unit="distinct pairs",
                          every_s=cfg.spark.progress_interval_s, counter=prepared.settings.progress):
                unit.write(out, S.USER_AD_SCORES, partition_col=S.SCORE_DATE, values=[date],
                           description=f"{model.uri} scores {score_date}", merge_schema=True)
            written = tables.read_table(spark, cfg.storage, S.USER_AD_SCORES).where(F.col(S.SCORE_DATE) == ds)
            n_pairs = written.count()
            unit.write(embeddings, S.USER_EMBEDDINGS, partition_col=S.SCORE_DATE, values=[date],
                       description=f"{model.uri} retrieval embeddings {score_date}")
            for df in cached:
                df.unpersist()
        log.info("%d pairs, %d distinct model inputs scored (text inputs, through the cross-encoder): %d pairs "
                 "carried their text logit from the previous date, %d took that of an identical text input",
                 n_pairs, n_inputs, n_reused, n_pairs - n_reused - n_inputs)
        with watch.stage("rerank"):
            recs = rerank(written, night.users.withColumn("_key", _user_key(cfg)), info, cfg)
            recs_out = recs.select(ds.alias(S.SCORE_DATE), S.USER_ID, S.RANK, S.AD_ID, S.SCORE, S.REASON, S.STRATEGY,
                                   F.lit(model.name).alias(S.MODEL_NAME), F.lit(model.version).alias(S.MODEL_VERSION))
            unit.write(recs_out, S.RECOMMENDATIONS, partition_col=S.SCORE_DATE, values=[date],
                       description=f"{model.uri} top-{cfg.score.top_k} {score_date}")
            n_recs = tables.read_table(spark, cfg.storage, S.RECOMMENDATIONS).where(F.col(S.SCORE_DATE) == ds).count()
        result = ScoringResult(score_date=date, model_name=model.name, model_version=model.version, users=0,
                               users_by_strategy={}, eligible_ads=0, pairs_scored=n_pairs, all_pairs=0,
                               recommendations=n_recs, seconds=watch.elapsed(), stage_seconds=watch.stages,
                               inputs_scored=n_inputs, pairs_reused=n_reused,
                               embeddings_reused=counts["embeddings_reused"])
        _record_run(unit, cfg, score_date, result, versions=night.versions, **record)
    return result


def _record_run(unit: tables.PartitionUnit, cfg: AppConfig, score_date: dt.date, result: ScoringResult, *,
                plan: inc.Plan, reuse: _Reuse | None, versions: dict[str, int | None], settings: dict) -> None:
    """``scoring_runs``' row of the date (replaced on rerun), and the lineage on ``result``."""
    base = plan.base
    result.mode, result.fallback_reason = plan.mode, plan.reason
    result.base_date = base.score_date.isoformat() if base else None
    result.built_on = {} if base is None or reuse is None else {
        "user_profiles_version": base.user_profiles_version, "ads_version": base.ads_version,
        "user_ad_scores_version": reuse.base_scores_version}
    if reuse is not None and reuse.base_embeddings_version is not None:
        result.built_on["user_embeddings_version"] = reuse.base_embeddings_version
    result.changes = dict(reuse.changes) if reuse else {}
    row = inc.runs_row(unit.spark, {
        S.SCORE_DATE: score_date, "mode": plan.mode, "base_date": base.score_date if base else None,
        "fallback_reason": plan.reason or None, S.MODEL_NAME: result.model_name,
        S.MODEL_VERSION: result.model_version, "score_settings": json.dumps(settings, sort_keys=True),
        "settings_fingerprint": inc.fingerprint(settings),
        "user_profiles_version": versions[S.USER_PROFILES], "ads_version": versions[S.ADS],
        "base_scores_version": reuse.base_scores_version if reuse else None,
        "base_user_profiles_version": base.user_profiles_version if base else None,
        "base_ads_version": base.ads_version if base else None, "pairs": result.pairs_scored,
        "pairs_reused": result.pairs_reused, "inputs_scored": result.inputs_scored, "changes": result.changes,
        "seconds": result.seconds, "finished_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
        "base_embeddings_version": reuse.base_embeddings_version if reuse else None,
        "embeddings_reused": result.embeddings_reused})
    # merge_schema: a scoring_runs table written before its last columns existed gains them
    unit.write(row, S.SCORING_RUNS, partition_col=S.SCORE_DATE, values=[score_date.isoformat()],
               description=f"{plan.mode} scoring run {score_date}", merge_schema=True)


def rerank(scores: DataFrame, users: DataFrame, info: AdInfo, cfg: AppConfig) -> DataFrame:
    """Top-K per user after the diversity re-rank, with reasons (grouped by user, in applyInPandas)."""
    sc = cfg.score
    u = users.select(F.col("_key").alias(S.USER_ID), S.STRATEGY, "recent_clicked_ad_ids", "recent_queries")
    joined = scores.select(S.USER_ID, S.AD_ID, S.SCORE, "candidate_source").join(u, S.USER_ID)
    binfo = scores.sparkSession.sparkContext.broadcast(info)
    fn = partial(_rerank_one, binfo=binfo, k=sc.top_k, max_per_advertiser=sc.max_per_advertiser,
                 duplicate_similarity=sc.duplicate_similarity, reason_min_similarity=sc.reason_min_similarity)
    return joined.groupBy(S.USER_ID).applyInPandas(fn, RECS_SCHEMA)


def _rerank_one(df, *, binfo, **kw):
    return rerank_group(df, binfo.value, **kw)
