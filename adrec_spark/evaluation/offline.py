"""Scores computed elsewhere, evaluated here: the test rows' scores that ``python -m
adrec_spark.model.offline_train`` brings back from a machine without Spark (``test_scores.parquet``), joined to
the same test rows and measured with the evaluation job's own baselines, metrics, intervals and paired
differences (:mod:`adrec_spark.evaluation.pipeline`)."""

from __future__ import annotations

import logging

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.config import AppConfig
from adrec_spark.errors import InputDataError
from adrec_spark.evaluation import baselines as B
from adrec_spark.evaluation.pipeline import (
    MODEL,
    TEST_COLUMNS,
    Info,
    add_baseline_scores,
    method_metrics,
    paired_comparisons,
)
from adrec_spark.frames import require_columns

log = logging.getLogger(__name__)

SCORE, RANK_SCORE, PRETRAINED = "score", "rank_score", "pretrained"


def join_offline_scores(test: DataFrame, scores: DataFrame) -> DataFrame:
    """The test rows (:data:`TEST_COLUMNS`) with the model's columns as the evaluation job names them
    (``model``: the click probability, ``model__rank``: the pair logit that ranks a user's ads) and, when the
    scores carry it, the ``pretrained`` zero-shot baseline; matched on ``event_id`` (rows without a score drop
    out: check them with :func:`check_offline_scores`)."""
    require_columns(test, TEST_COLUMNS, "join_offline_scores (test rows)")
    require_columns(scores, (S.EVENT_ID, SCORE, RANK_SCORE), "join_offline_scores (scores)")
    cols = [F.col(S.EVENT_ID), F.col(SCORE).cast("double").alias(MODEL),
            F.col(RANK_SCORE).cast("double").alias(MODEL + B.RANK_SUFFIX)]
    if PRETRAINED in scores.columns:
        cols.append(F.col(PRETRAINED).cast("double").alias(PRETRAINED))
    texts = [c for c in S.HISTORY_ITEM_TEXTS if c in test.columns]  # for the text baseline
    return test.select(*TEST_COLUMNS, *texts).join(scores.select(*cols), S.EVENT_ID, "inner")


def check_offline_scores(test: DataFrame, scores: DataFrame) -> dict[str, int]:
    """Every test row has exactly one score and the scores' labels are the test rows' labels; else an error
    saying how the two differ (scores of another split or another ETL run). Returns the counts."""
    require_columns(scores, (S.EVENT_ID, S.LABEL), "check_offline_scores (scores)")
    repeated = scores.count() - scores.select(S.EVENT_ID).distinct().count()
    if repeated:
        raise InputDataError(f"the scores repeat {repeated} event id(s): each test row must be scored once")
    s = scores.select(S.EVENT_ID, F.col(S.LABEL).cast("int").alias("_score_label"))
    t = test.select(S.EVENT_ID, F.col(S.LABEL).cast("int").alias("_test_label"))
    r = t.join(s, S.EVENT_ID, "full_outer").agg(
        F.count(F.col("_test_label")).alias("test_rows"), F.count(F.col("_score_label")).alias("scores"),
        F.count(F.when(F.col("_test_label").isNull(), 1)).alias("scores_without_a_test_row"),
        F.count(F.when(F.col("_score_label").isNull(), 1)).alias("test_rows_without_a_score"),
        F.count(F.when(F.col("_test_label") != F.col("_score_label"), 1)).alias("labels_that_differ")).first()
    counts = {k: int(v) for k, v in r.asDict().items()}
    problems = [f"{counts[k]} {k.replace('_', ' ')}" for k in ("scores_without_a_test_row",
                                                               "test_rows_without_a_score", "labels_that_differ")
                if counts[k]]
    if problems:
        raise InputDataError(f"the scores do not match the test rows ({counts['test_rows']} test rows, "
                             f"{counts['scores']} scores): {', '.join(problems)}; prepare and train again")
    return counts


def evaluate_offline_scores(cfg: AppConfig, *, train: DataFrame, test: DataFrame, scores: DataFrame,
                            label: str = MODEL) -> tuple[pd.DataFrame, pd.DataFrame, Info]:
    """The method-by-metric table, the paired NDCG@K differences of the model against each baseline, and each
    metric's n/interval/flags, as the evaluation job computes them, for scores brought back from elsewhere.
    Baselines in ``cfg.evaluate.baselines`` that the scores do not carry are computed here (fitted on
    ``train``)."""
    check_offline_scores(test, scores)
    df = join_offline_scores(test, scores)
    missing = [b for b in cfg.evaluate.baselines if b not in df.columns]
    df = add_baseline_scores(df, train, cfg, baselines=missing).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        methods = [MODEL, *cfg.evaluate.baselines]
        table, _, per_user, info = method_metrics(df, methods, cfg)
        comparison = paired_comparisons(per_user, k=max(cfg.evaluate.ks), label=label)
    finally:
        df.unpersist()
    return table, comparison, info
