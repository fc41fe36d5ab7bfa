"""The evaluation job: the registered model and every baseline on the same test split, click and ranking
metrics in Spark, beyond-accuracy metrics of the recommendations, to MLflow, ``eval_metrics`` and one HTML
report."""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.config import AppConfig
from adrec_spark.errors import InputDataError
from adrec_spark.evaluation import baselines as B
from adrec_spark.evaluation.beyond import beyond_accuracy
from adrec_spark.evaluation.metrics import (
    click_metrics,
    paired_difference,
    ranking_metrics,
    ranking_metrics_with_per_user_ndcg,
    score_curves,
)
from adrec_spark.evaluation.report import write_report
from adrec_spark.evaluation.uncertainty import (
    EMPTY_INPUT,
    SMALL_N,
    UNDEFINED,
    IntervalSettings,
    MetricInfo,
    click_info,
    ranking_info,
)
from adrec_spark.io import fs, tables
from adrec_spark.logs import Stopwatch
from adrec_spark.model_udf import (
    PreparedModel,
    UdfSettings,
    model_udf,
    numeric_struct,
    prepare_model,
    pretrained_cosine_udf,
    resolve_model,
    text_encoder,
)
from adrec_spark.progress import Progress, progress
from adrec_spark.registry import registry
from adrec_spark.scoring import text_similarity as T
from adrec_spark.scoring.candidates import COLD_STRATEGIES, PERSONALIZED, QUERY
from adrec_spark.training import split as split_mod

log = logging.getLogger(__name__)

MODEL = "model"
# Methods that read nothing but the history text: on rows without history their score means nothing.
TEXT_ONLY_METHODS = frozenset({"pretrained"})
TEXT_BASELINE = "logistic_regression_text"  # logistic regression + text similarity (scoring/text_similarity.py)
EMPTY_INPUT_SHARE = 0.5  # flagged empty_input when at least this share of the test rows has no history
COLD_USERS, WARM_USERS = "[cold users]", "[users with history]"
Info = dict[tuple[str, str], MetricInfo]  # (method, metric column) -> n, interval, flags


@dataclass
class EvaluationResult:
    run_id: str
    eval_date: str
    model_name: str
    model_version: int
    table: pd.DataFrame  # method x metric
    beyond: pd.DataFrame | None
    report_path: Path  # a local file (for a remote evaluate.report_dir, the copy the job uploaded)
    seconds: float
    comparison: pd.DataFrame | None = None  # the model minus each baseline, per user (paired_comparisons)
    report_location: str = ""  # where the report is in evaluate.report_dir (a path or a storage URI)
    info: Info | None = None  # per (method, metric): n, interval and flags (uncertainty.MetricInfo)


def _test_rows(spark: SparkSession, cfg: AppConfig, model: registry.ResolvedModel) -> tuple[DataFrame, DataFrame, int]:
    """The train and test rows of the split ``model`` was trained with: the table version and cut-offs recorded on
    its registry version (see :mod:`adrec_spark.training.split`). A version trained before they were recorded:
    ``train.split`` over the latest table version, with a warning."""
    tags = registry.version_tags(cfg.mlflow, model.version, name=model.name)
    cutoffs = split_mod.SplitCutoffs.from_tags(tags)
    version = int(tags["table_version"]) if cutoffs is not None and tags.get("table_version") else None
    if version is None:
        version = tables.table_version(spark, cfg.storage, S.TRAINING_EXAMPLES)
    if version is None:
        raise InputDataError("table 'training_examples' does not exist: run the ETL job first")
    if cutoffs is None:
        log.warning("%s v%d has no recorded split cut-offs (trained before they were recorded): splitting "
                    "training_examples v%d by train.split", model.name, model.version, version)
    else:
        log.info("evaluating on the split %s v%d was trained with: %s", model.name, model.version,
                 cutoffs.describe())
    train, test = split_rows(spark, cfg, version=version, cutoffs=cutoffs)
    return train, test, version


def split_rows(spark: SparkSession, cfg: AppConfig, *, version: int,
               cutoffs: split_mod.SplitCutoffs | None) -> tuple[DataFrame, DataFrame]:
    """The train and test rows of ``training_examples`` at ``version`` under ``cutoffs`` (None: ``train.split``
    over that version, as the training job would cut it today)."""
    ex = tables.read_table(spark, cfg.storage, S.TRAINING_EXAMPLES, version=version).drop(S.SPLIT)
    if cutoffs is None:
        cutoffs = split_mod.compute_cutoffs(ex, cfg.train.split, window_days=cfg.train.window_days)
    ex = split_mod.assign_split(ex, cutoffs)
    return ex.where(F.col(S.SPLIT) == S.TRAIN), ex.where(F.col(S.SPLIT) == S.TEST)


# What every method's score is computed from, on each test row.
TEST_COLUMNS = (S.EVENT_ID, S.USER_ID, S.AD_ID, S.LABEL, S.HISTORY_TEXT, S.AD_TEXT, *S.NUMERIC_FEATURES,
                "ad_impressions")


def _text_train(train: DataFrame) -> DataFrame:
    return train.select(S.LABEL, *S.NUMERIC_FEATURES, S.AD_TEXT, *S.HISTORY_ITEM_TEXTS)


def add_baseline_scores(df: DataFrame, train: DataFrame, cfg: AppConfig, *, baselines: Sequence[str],
                        vectors: DataFrame | None = None) -> DataFrame:
    """The test rows ``df`` with one score column per baseline in ``baselines`` (learning ones fitted on
    ``train``), as the evaluation job computes them. The text baseline needs the history texts by kind in
    ``df`` and ``train``; ``vectors``: their embeddings when already computed (else each distinct text of both
    is embedded once here)."""
    ev = cfg.evaluate
    if TEXT_BASELINE in baselines:  # logistic regression + text similarity, fitted on train
        T.require_history_texts(df, "the test rows")
        text_train = _text_train(train)
        if vectors is None:
            vectors = T.collect_text_vectors([df, text_train], text_encoder(cfg))
        test_sims = df if set(S.TEXT_SIMILARITY_FEATURES) <= set(df.columns) else \
            T.with_text_similarity(df, vectors=vectors)
        scored = B.logistic_regression_text_scores(T.with_text_similarity(text_train, vectors=vectors), test_sims,
                                                   user_features=tuple(cfg.model.user_features))
        df = scored.drop(*(c for c in S.TEXT_SIMILARITY_FEATURES if c not in df.columns))
    if "random" in baselines:
        df = B.random_scores(df, seed=ev.seed)
    if "popularity" in baselines:
        df = B.popularity_scores(df)
    if "item_rate" in baselines:
        df = B.item_rate_scores(df)
    if "logistic_regression" in baselines:
        df = B.logistic_regression_scores(train, df, user_features=tuple(cfg.model.user_features))
    if "als" in baselines:
        df = B.als_scores(train, df, rank=ev.als_rank, max_iter=ev.als_max_iter, reg=ev.als_reg, seed=ev.seed)
    if "pretrained" in baselines:
        cos = pretrained_cosine_udf(text_encoder(cfg))
        df = df.withColumn("pretrained", cos(F.col(S.HISTORY_TEXT), F.col(S.AD_TEXT)).cast("double"))
    return df


def scored_test_set(spark: SparkSession, cfg: AppConfig, settings: UdfSettings,
                    model: registry.ResolvedModel, *, progress: Progress | None = None,
                    model_features: Sequence[str] = S.NUMERIC_FEATURES) -> tuple[DataFrame, int]:
    """The test rows of ``model``'s own split with one score column per method (persisted: every metric reads
    it). ``progress`` learns the number of test rows the model will score (a count of one split of a table).
    ``model_features``: the numeric features the model reads (its spec's; the text-similarity ones, if it has
    them, are computed here, each distinct text embedded once for the model and the text baseline together)."""
    ev = cfg.evaluate
    train, test, version = _test_rows(spark, cfg, model)
    n_test = test.count() if progress is not None else test.limit(1).count()
    if n_test == 0:
        raise InputDataError("the test split of training_examples is empty: nothing to evaluate")
    if progress is not None:
        progress.set_total(n_test)
    baseline = TEXT_BASELINE in ev.baselines
    texts = list(S.HISTORY_ITEM_TEXTS) if baseline or T.uses_text_similarity(model_features) else []
    if texts:
        T.require_history_texts(test, f"training_examples v{version}")
    df = test.select(*TEST_COLUMNS, *texts)
    vectors = T.collect_text_vectors([df, *([_text_train(train)] if baseline else [])], text_encoder(cfg)) \
        if texts else None
    if vectors is not None:
        df = T.with_text_similarity(df, vectors=vectors)
    parts = model_udf(settings, output="parts")(F.col(S.AD_TEXT), F.col(S.HISTORY_TEXT),
                                                numeric_struct(list(model_features)))
    df = (df.withColumn("_parts", parts).withColumn(MODEL, F.col("_parts.score").cast("double"))
          .withColumn(MODEL + B.RANK_SUFFIX, F.col("_parts.rank_score").cast("double")).drop("_parts"))
    df = add_baseline_scores(df, train, cfg, baselines=ev.baselines, vectors=vectors)
    return df.drop(*texts, *S.TEXT_SIMILARITY_FEATURES).persist(StorageLevel.MEMORY_AND_DISK), version


def per_user_item(df: DataFrame, score_col: str) -> DataFrame:
    """One ranking candidate per (user, ad): an ad shown several times is relevant if any showing was
    clicked, and ranks by its mean score."""
    return df.groupBy(S.USER_ID, S.AD_ID).agg(F.max(S.LABEL).alias(S.LABEL), F.avg(score_col).alias(score_col))


def interval_settings(cfg: AppConfig) -> IntervalSettings:
    ev = cfg.evaluate
    return IntervalSettings(samples=ev.bootstrap_samples, confidence=ev.confidence, seed=ev.seed,
                            min_users=ev.min_users, min_positives=ev.min_positives)


def _empty_history_share(df: DataFrame) -> float:
    empty = F.length(F.coalesce(F.col(S.HISTORY_TEXT), F.lit(""))) == 0
    return float(df.agg(F.avg(empty.cast("double"))).first()[0] or 0.0)


def _method_info(df: DataFrame, m: str, rank_col: str, click: dict, ranking: dict, cfg: AppConfig,
                 empty_share: float) -> dict[str, MetricInfo]:
    """n, interval and flags of every metric of one method (see :mod:`uncertainty`)."""
    settings = interval_settings(cfg)
    out = click_info(df, click, score_col=m, probabilities=B.PROBABILISTIC.get(m, False),
                     threshold=cfg.evaluate.threshold, settings=settings)
    out |= ranking_info(per_user_item(df, rank_col), ranking, score_col=rank_col, ks=cfg.evaluate.ks,
                        settings=settings)
    if m in TEXT_ONLY_METHODS and empty_share >= EMPTY_INPUT_SHARE:
        out = {k: v.flagged(EMPTY_INPUT) for k, v in out.items()}
    return out


def method_metrics(df: DataFrame, methods: list[str],
                   cfg: AppConfig) -> tuple[pd.DataFrame, dict, dict[str, DataFrame], Info]:
    """One row of click and ranking metrics per method, each method's curves, and each method's per-user
    NDCG@K (K: the largest cut-off; persisted frames, from the same ranking as the table, for
    :func:`paired_comparisons`, which unpersists them; on an error here they are unpersisted before it propagates).

    Ranking metrics rank a user's rows by :func:`baselines.rank_column`: for the model and the logistic
    regression that is the logit less the terms of the user-only features. Scored for one user at one moment
    (the scoring job) those terms are equal for every ad and cannot change the order; on point-in-time test
    rows each row has its own user features (a user's click rate moves with every rating, and a row's own
    label is never in its own rate), which only adds noise to the order. A ``<method> [by probability]`` row
    keeps the ranking by the full probability for comparison.

    The fourth value holds each metric's n, interval and flags (:mod:`uncertainty`); a text-only baseline is
    flagged ``empty_input`` when most test rows have no history.
    """
    ev = cfg.evaluate
    rows, curves, per_user, info = {}, {}, {}, {}
    empty_share = _empty_history_share(df) if TEXT_ONLY_METHODS & set(methods) else 0.0
    try:
        for m in methods:
            prob = B.PROBABILISTIC.get(m, False)
            watch = Stopwatch()
            click = click_metrics(df, score_col=m, threshold=ev.threshold, bins=ev.calibration_bins,
                                  probabilities=prob)
            rank_col = B.rank_column(m, df.columns)
            ranking, per_user[m] = ranking_metrics_with_per_user_ndcg(per_user_item(df, rank_col),
                                                                      score_col=rank_col, ks=ev.ks)
            curves[m] = score_curves(df, score_col=m, calibration_bins=ev.calibration_bins, probabilities=prob)
            rows[m] = {**click, **ranking}
            info |= {(m, k): v for k, v in _method_info(df, m, rank_col, click, ranking, cfg, empty_share).items()}
            if rank_col != m:
                by_prob = f"{m} [by probability]"
                rows[by_prob] = ranking_metrics(per_user_item(df, m), score_col=m, ks=ev.ks)
                info |= {(by_prob, k): v for k, v in ranking_info(
                    per_user_item(df, m), rows[by_prob], score_col=m, ks=ev.ks,
                    settings=interval_settings(cfg)).items()}
            log.info("%s: AUC %.4f, NDCG@%d %.4f (%.1fs)", m, click["auc"], max(ev.ks),
                     ranking.get(f"ndcg@{max(ev.ks)}", float("nan")), watch.elapsed())
    except BaseException:
        release(per_user)
        raise
    return pd.DataFrame.from_dict(rows, orient="index"), curves, per_user, info


def release(frames: dict[str, DataFrame]) -> None:
    """Unpersist every frame (a frame not cached is left as it is)."""
    for frame in frames.values():
        frame.unpersist()


def paired_comparisons(per_user: dict[str, DataFrame], *, k: int, label: str = MODEL) -> pd.DataFrame:
    """Is the model's NDCG@K better than each baseline's for the same users, beyond chance? ``per_user``: each
    method's per-user NDCG@K as :func:`method_metrics` returns it (ranked as in its table; unpersisted here).
    Per user, the model's NDCG@K minus the baseline's: the mean difference, its 95% interval (normal
    approximation over users) and how many users each way. One row per baseline, named
    ``<label> - <baseline>``."""
    ref = per_user[MODEL]
    rows = {}
    try:
        for m, other in per_user.items():
            if m == MODEL:
                continue
            r = paired_difference(ref, other)
            rows[f"{label} - {m}"] = {f"ndcg_diff@{k}": r["diff"], f"ndcg_diff_ci_low@{k}": r["ci_low"],
                                      f"ndcg_diff_ci_high@{k}": r["ci_high"], "n_users": r["n_users"],
                                      "users_better": r["users_better"], "users_worse": r["users_worse"]}
            log.info("%s - %s: NDCG@%d %+.4f (95%% CI %+.4f .. %+.4f) over %d users", label, m, k, r["diff"],
                     r["ci_low"], r["ci_high"], int(r["n_users"]))
    finally:
        release(per_user)
    return pd.DataFrame.from_dict(rows, orient="index")


def _popular_recs(spark: SparkSession, cfg: AppConfig, users: DataFrame, ads: DataFrame, k: int) -> DataFrame:
    """The popularity baseline's lists: the k most clicked ads, the same for everyone (minus clicked)."""
    top = ads.orderBy(F.col("ad_clicks").desc(), S.AD_ID).limit(k * 3).select(S.AD_ID, "ad_clicks")
    ranked = (users.select(S.USER_ID, "clicked_ad_ids").crossJoin(top)
              .where(~F.array_contains("clicked_ad_ids", F.col(S.AD_ID))))
    from pyspark.sql import Window

    w = Window.partitionBy(S.USER_ID).orderBy(F.col("ad_clicks").desc(), S.AD_ID)
    return ranked.withColumn(S.RANK, F.row_number().over(w)).where(F.col(S.RANK) <= k).select(S.USER_ID, S.AD_ID,
                                                                                               S.RANK)


def beyond_metrics(spark: SparkSession, cfg: AppConfig, score_date: dt.date, settings: UdfSettings,
                   model: registry.ResolvedModel) -> pd.DataFrame | None:
    """Coverage, diversity, personalization, novelty and advertiser fairness of the model's lists of
    ``score_date`` (and, for contrast, of the popularity baseline's); also for the users without history
    (``[cold users]``: strategies shown and popular) and with history (``[users with history]``) apart."""
    ds = F.lit(score_date.isoformat()).cast("date")
    if tables.table_version(spark, cfg.storage, S.RECOMMENDATIONS) is None:
        log.warning("no recommendations table: skipping beyond-accuracy metrics (run the scoring job)")
        return None
    recs = tables.read_table(spark, cfg.storage, S.RECOMMENDATIONS).where(F.col(S.SCORE_DATE) == ds)
    if recs.limit(1).count() == 0:
        log.warning("no recommendations for %s: skipping beyond-accuracy metrics", score_date)
        return None
    if cfg.privacy.pseudonymize_user_ids:
        log.info("pseudonymous user ids in recommendations: beyond-accuracy metrics do not need raw ids")
    ads = tables.read_table(spark, cfg.storage, S.ADS).where(F.col(S.DS) == ds)
    embed = model_udf(settings, output="embedding")
    ads = ads.withColumn("embedding", embed(F.col(S.AD_TEXT))).persist(StorageLevel.MEMORY_AND_DISK)
    train, _, _ = _test_rows(spark, cfg, model)
    popularity = train.where(F.col(S.LABEL) == 1).groupBy(S.AD_ID).agg(F.countDistinct(S.USER_ID).alias("n_users"))
    total_users = train.select(S.USER_ID).distinct().count()
    out = {f"{MODEL} v{model.version}": beyond_accuracy(recs, ads, popularity=popularity, total_users=total_users)}
    # Users without history on their own: one list for all of them shows as coverage and personalization near 0.
    for label, strategies in ((COLD_USERS, COLD_STRATEGIES), (WARM_USERS, (PERSONALIZED, QUERY))):
        part = recs.where(F.col(S.STRATEGY).isin(*strategies))
        if part.limit(1).count():
            out[f"{MODEL} v{model.version} {label}"] = beyond_accuracy(part, ads, popularity=popularity,
                                                                      total_users=total_users)
    users = tables.read_table(spark, cfg.storage, S.USER_PROFILES).where(F.col(S.DS) == ds)
    k = int(recs.agg(F.max(S.RANK)).first()[0])
    if not cfg.privacy.pseudonymize_user_ids:
        out["popularity"] = beyond_accuracy(_popular_recs(spark, cfg, users, ads, k), ads, popularity=popularity,
                                            total_users=total_users)
    ads.unpersist()
    return pd.DataFrame.from_dict(out, orient="index")


def _latest_score_date(spark: SparkSession, cfg: AppConfig) -> dt.date | None:
    if tables.table_version(spark, cfg.storage, S.RECOMMENDATIONS) is None:
        return None
    d = tables.read_table(spark, cfg.storage, S.RECOMMENDATIONS).agg(F.max(S.SCORE_DATE)).first()[0]
    return d


EVAL_EXTRA_COLUMNS = (("n_rows", "double"), ("n_positives", "double"), ("n_users", "double"), ("ci_low", "double"),
                      ("ci_high", "double"), ("flag", "string"))


def frame_info(frame: pd.DataFrame | None, *, min_users: int) -> Info:
    """n and flags of beyond-accuracy or paired-comparison rows (their own ``n_users`` column; the paired
    difference's interval from its ``ci_low``/``ci_high`` columns)."""
    out: Info = {}
    if frame is None:
        return out
    for method, row in frame.iterrows():
        n_users = float(row.get("n_users", math.nan))
        base = MetricInfo(n_rows=float(row.get("n_recommendations", math.nan)), n_users=n_users)
        for metric, value in row.items():
            name, _, k = str(metric).partition("@")
            info = base
            if name == "ndcg_diff":
                info = replace(base, ci_low=float(row[f"ndcg_diff_ci_low@{k}"]),
                               ci_high=float(row[f"ndcg_diff_ci_high@{k}"]))
            if metric not in ("n_users", "n_recommendations"):
                info = info.flagged(*([SMALL_N] if not n_users >= min_users else []),
                                    *([UNDEFINED] if not math.isfinite(float(value)) else []))
            out[(str(method), str(metric))] = info
    return out


def eval_rows(frames: list[pd.DataFrame | None], info: Info) -> list[tuple]:
    """``eval_metrics`` rows past the run's columns: (method, metric, k, value, n_rows, n_positives, n_users,
    ci_low, ci_high, flag)."""
    rows = []
    for frame in frames:
        if frame is None:
            continue
        for method, row in frame.iterrows():
            for metric, value in row.items():
                name, _, k = str(metric).partition("@")
                v = float(value) if value is not None else float("nan")
                i = info.get((str(method), str(metric)), MetricInfo())
                rows.append((str(method), name, int(k) if k else None, v, i.n_rows, i.n_positives, i.n_users,
                             i.ci_low, i.ci_high, i.flag))
    return rows


def _add_eval_columns(spark: SparkSession, cfg: AppConfig) -> None:
    """An ``eval_metrics`` table written before the n/interval/flag columns gets them (null in old rows)."""
    if tables.table_version(spark, cfg.storage, S.EVAL_METRICS) is None:
        return
    have = set(tables.read_table(spark, cfg.storage, S.EVAL_METRICS).columns)
    missing = [f"{c} {t}" for c, t in EVAL_EXTRA_COLUMNS if c not in have]
    if missing:
        path = cfg.storage.table_path(S.EVAL_METRICS).replace("`", "``")
        spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({', '.join(missing)})")
        log.info("eval_metrics: added columns %s", missing)


def _test_last_date(spark: SparkSession, cfg: AppConfig, model: registry.ResolvedModel) -> dt.date | None:
    """The last date of the test split ``model`` was evaluated on: what the evaluation evaluated when there are
    no recommendations."""
    _, test, _ = _test_rows(spark, cfg, model)
    return test.agg(F.max(S.DS)).first()[0]


def _with_version(table: pd.DataFrame, curves: dict, info: Info, version: int) -> tuple[pd.DataFrame, dict, Info]:
    """The model's rows named ``model v<version>`` (and ``... [by probability]``)."""
    names = {MODEL: f"{MODEL} v{version}", f"{MODEL} [by probability]": f"{MODEL} v{version} [by probability]"}
    return (table.rename(index=names), {names.get(k, k): v for k, v in curves.items()},
            {(names.get(m, m), metric): v for (m, metric), v in info.items()})


def _mlflow_key(method: str) -> str:
    """An MLflow metric-name prefix (letters, digits, ``_-./`` only): ``model v3 [by probability]`` ->
    ``model_v3_by_probability``."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_\-./]", "_", method)).strip("_")


def _local_report_path(report_dir: str, name: str) -> Path:
    """Where the report is written first: in ``report_dir`` when it is local (a path or ``file:`` URI), else in
    a local temporary folder, from where the job uploads it."""
    local = fs.local_path(report_dir)
    if local is None:
        local = Path(tempfile.gettempdir()) / "adrec-spark-reports"
    return local / name


def run_evaluation(spark: SparkSession, cfg: AppConfig, score_date: dt.date | None = None) -> EvaluationResult:
    """Evaluate the configured model (``score.model_alias`` or ``score.model_version``) and every baseline on the
    test split it was trained with; beyond-accuracy metrics on the recommendations of ``score_date`` (default:
    the latest scored date). Writes ``eval_metrics`` (the evaluated date's partition, replaced on rerun), an
    MLflow run and the HTML report."""
    watch = Stopwatch()
    fs.to_arrow_uri(cfg.evaluate.report_dir)  # a scheme Python cannot write fails here, before any Spark work
    prepared = prepare_model(spark, cfg, resolve_model(cfg), progress=spark.sparkContext.accumulator(0))
    registry.configure_mlflow(cfg.mlflow)
    model = prepared.model
    table, curves, info, comparison, version = _accuracy(spark, cfg, prepared)
    score_date = score_date or _latest_score_date(spark, cfg)
    beyond = beyond_metrics(spark, cfg, score_date, prepared.settings, model) if score_date else None
    for frame in (beyond, comparison):
        info |= frame_info(frame, min_users=cfg.evaluate.min_users)
    # Named after the data it evaluated (the recommendations' date, else the test split's last day), never
    # today's wall-clock date; the clock only when the test split has no date at all.
    eval_date = score_date or _test_last_date(spark, cfg, model) or dt.date.today()
    metric_rows = eval_rows([table, beyond, comparison], info)
    report, report_location, run_id = _log_run(cfg, model, version, eval_date, score_date, metric_rows, table=table,
                                               curves=curves, beyond=beyond, comparison=comparison, info=info)
    _write_eval_metrics(spark, cfg, [(eval_date, run_id, model.name, model.version, version, *r) for r in metric_rows],
                        eval_date)
    result = EvaluationResult(run_id=run_id, eval_date=eval_date.isoformat(), model_name=model.name,
                              model_version=model.version, table=table, beyond=beyond, report_path=report,
                              report_location=report_location, seconds=watch.elapsed(), comparison=comparison,
                              info=info)
    log.info("evaluation written: %s (%.0fs)", report_location, result.seconds)
    return result


def _accuracy(spark: SparkSession, cfg: AppConfig,
              prepared: PreparedModel) -> tuple[pd.DataFrame, dict, Info, pd.DataFrame, int]:
    """The model and every baseline on the model's own test split: the method-by-metric table (the model's rows
    named with its version), curves, n/interval/flags, the paired comparisons, and the table version."""
    model = prepared.model
    with progress(spark, "evaluation", unit="test rows", every_s=cfg.spark.progress_interval_s,
                  counter=prepared.settings.progress) as scoring:
        df, version = scored_test_set(spark, cfg, prepared.settings, model, progress=scoring,
                                      model_features=prepared.numeric_features)
        try:
            table, curves, per_user, info = method_metrics(df, [MODEL, *cfg.evaluate.baselines], cfg)
            comparison = paired_comparisons(per_user, k=max(cfg.evaluate.ks), label=f"{MODEL} v{model.version}")
        finally:
            df.unpersist()
    table, curves, info = _with_version(table, curves, info, model.version)
    return table, curves, info, comparison, version


REPORT_NOTES = (
    "Ranking metrics rank each user's own test impressions by score; users without a click in test are skipped. "
    "The model and the logistic regression rank by their logit less the user-only terms (equal for all of a user's "
    "ads when the scoring job ranks them at one moment); their [by probability] rows rank by the full score.",
    "logistic_regression_text: the logistic regression plus the ad's cosine (pretrained encoder) to the user's "
    "clicked ads, searches and reviews (max, mean, count).",
    "popularity, als and pretrained scores are not probabilities: no log-loss or calibration.")


def _log_run(cfg: AppConfig, model: registry.ResolvedModel, version: int, eval_date: dt.date,
             score_date: dt.date | None, metric_rows: list[tuple], *, table: pd.DataFrame, curves: dict,
             beyond: pd.DataFrame | None, comparison: pd.DataFrame | None, info: Info) -> tuple[Path, str, str]:
    """The MLflow run (parameters, finite metrics, the report and the table as artifacts) and the HTML report in
    ``evaluate.report_dir``: (local report file, its location in report_dir, run id)."""
    import mlflow

    with mlflow.start_run(run_name=f"evaluate-{model.name}-v{model.version}") as run:
        mlflow.set_tags({"adrec.job": "evaluate", "adrec.model_version": str(model.version)})
        mlflow.log_params({"model": model.uri, "alias": cfg.score.model_alias, "training_examples_version": version,
                           "eval_date": eval_date.isoformat(), "ks": ",".join(map(str, cfg.evaluate.ks))})
        for method, metric, k, value, *_ in metric_rows:
            if math.isfinite(value):
                mlflow.log_metric(_mlflow_key(method) + f".{metric}" + (f"_at_{k}" if k else ""), value)
        report_name = f"evaluation-{eval_date.isoformat()}.html"
        report = write_report(
            _local_report_path(cfg.evaluate.report_dir, report_name),
            title=f"adrec-spark evaluation: {model.name} v{model.version}",
            subtitle=f"test split of training_examples v{version}; recommendations of {score_date or 'n/a'}",
            table=table, curves=curves, beyond=beyond, comparison=comparison, info=info,
            notes=[f"{int(table.iloc[0].get('n', 0))} test rows. {REPORT_NOTES[0]}", *REPORT_NOTES[1:]])
        mlflow.log_artifact(str(report), "report")
        report_location = fs.join(cfg.evaluate.report_dir, report_name)
        if not fs.is_local(report_location):
            fs.upload_file(report, report_location)
        mlflow.log_text(table.to_csv(), "eval_table.csv")
        return report, report_location, run.info.run_id


def _write_eval_metrics(spark: SparkSession, cfg: AppConfig, rows: list[tuple], eval_date: dt.date) -> None:
    """``eval_metrics``' partition of ``eval_date`` (replaced on rerun)."""
    out = spark.createDataFrame(rows, "eval_date date, run_id string, model_name string, model_version int, "
                                      "training_examples_version long, method string, metric string, k int, "
                                      "value double, " + ", ".join(f"{c} {t}" for c, t in EVAL_EXTRA_COLUMNS))
    _add_eval_columns(spark, cfg)
    tables.write_partitions(out, cfg.storage, S.EVAL_METRICS, partition_col="eval_date",
                            values=[eval_date.isoformat()])
