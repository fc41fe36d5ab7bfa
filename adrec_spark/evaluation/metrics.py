"""Offline accuracy metrics computed in Spark: only small aggregates (one row per bin or per metric) reach the driver.

Three entry points, all actions (they run Spark jobs; cache the input first if it is expensive to recompute):

* :func:`click_metrics`: pointwise click-prediction quality (AUC, PR-AUC, log loss, calibration, ...).
* :func:`ranking_metrics`: per-user top-K ranking quality (NDCG, precision, recall, MAP, hit rate, MRR).
* :func:`score_curves`: small plotting data (ROC, precision-recall, reliability diagram).

Rows with a null (or NaN) label or score are never dropped silently: they raise :class:`InputDataError` with
their count. Labels must be 0/1 (any numeric or boolean type).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from pyspark.ml.evaluation import BinaryClassificationEvaluator, RankingEvaluator
from pyspark.ml.feature import Bucketizer
from pyspark.sql import Column, DataFrame, Row, Window
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.errors import InputDataError
from adrec_spark.frames import require_columns

log = logging.getLogger(__name__)

NAN = float("nan")
LOG_LOSS_EPS = 1e-7
PROBABILITY_METRICS = ("log_loss", "accuracy", "precision", "recall", "ece", "brier")

# Our key prefix -> RankingEvaluator metricName
_RANKING_EVALUATOR_METRICS = {
    "ndcg": "ndcgAtK",
    "precision": "precisionAtK",
    "recall": "recallAtK",
    "map": "meanAveragePrecisionAtK",
}

_LABEL, _SCORE, _POS, _BIN, _BUCKET = "_label", "_score", "_pos", "_bin", "_bucket"


# --------------------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class _Counts:
    """Row counts used to validate a (label, score) frame."""

    rows: int
    null_label: int
    null_score: int
    bad_label: int
    out_of_range: int = 0


def _as_double(name: str) -> Column:
    return F.col(name).try_cast("double")  # a value that is not a number becomes null and is reported


def _null_or_nan(col: Column) -> Column:
    return col.isNull() | F.isnan(col)


def _validation_aggs(label: Column, score: Column) -> list[Column]:
    """Aggregates named ``_rows, _null_label, _null_score, _bad_label, _out_of_range`` (sum-able across groups)."""
    return [
        F.count(F.lit(1)).alias("_rows"),
        F.count(F.when(_null_or_nan(label), 1)).alias("_null_label"),
        F.count(F.when(_null_or_nan(score), 1)).alias("_null_score"),
        F.count(F.when(~_null_or_nan(label) & ~label.isin(0.0, 1.0), 1)).alias("_bad_label"),
        F.count(F.when((score < 0.0) | (score > 1.0), 1)).alias("_out_of_range"),
    ]


def _check_counts(c: _Counts, where: str, label_col: str, score_col: str, *, probabilities: bool) -> None:
    if c.rows == 0:
        raise InputDataError(f"{where}: the input has no rows; nothing to evaluate")
    n_null = c.null_label + c.null_score
    if n_null:
        raise InputDataError(
            f"{where}: {n_null} null/NaN value(s) in {c.rows} row(s) "
            f"({label_col!r}: {c.null_label}, {score_col!r}: {c.null_score}); "
            "fix or drop them before evaluating (they are not dropped silently)"
        )
    if c.bad_label:
        raise InputDataError(f"{where}: {c.bad_label} row(s) have a {label_col!r} other than 0 or 1")
    if probabilities and c.out_of_range:
        raise InputDataError(
            f"{where}: {c.out_of_range} {score_col!r} value(s) outside [0, 1]; pass probabilities=False "
            "for scores that are not probabilities"
        )


def _sum_counts(rows: Sequence[Row]) -> _Counts:
    return _Counts(
        rows=sum(r["_rows"] for r in rows),
        null_label=sum(r["_null_label"] for r in rows),
        null_score=sum(r["_null_score"] for r in rows),
        bad_label=sum(r["_bad_label"] for r in rows),
        out_of_range=sum(r["_out_of_range"] for r in rows),
    )


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else NAN


# ------------------------------------------------------------------------------------------ click metrics


def click_metrics(
    df: DataFrame,
    *,
    label_col: str = S.LABEL,
    score_col: str = S.SCORE,
    threshold: float = 0.5,
    bins: int = 10,
    probabilities: bool = True,
    auc_bins: int = 0,
) -> dict[str, float]:
    """Pointwise quality of click scores.

    Args:
        df: one row per (user, ad) impression with a 0/1 label and a score.
        label_col: the 0/1 label column.
        score_col: the score column (a probability when ``probabilities`` is True).
        threshold: ``score >= threshold`` counts as a predicted click (accuracy, precision, recall).
        bins: equal-width bins over [0, 1] for the expected calibration error.
        probabilities: False for scores that are not probabilities (e.g. a popularity count); then the
            probability metrics (log_loss, accuracy, precision, recall, ece, brier) are NaN.
        auc_bins: ``numBins`` of Spark's evaluator. 0 (default) computes AUC and PR-AUC exactly, with one curve
            point per distinct score (ties handled as sklearn's ``roc_auc_score`` does); a positive value
            down-samples the curves, which is cheaper on huge inputs but approximate.

    Returns:
        ``n``, ``positive_rate``, ``auc`` (area under ROC), ``pr_auc`` (Spark's ``areaUnderPR``: trapezoids over
        the (recall, precision) points of every distinct threshold, starting at (0, first precision); not the
        same as sklearn's step-wise ``average_precision_score``), ``log_loss`` (scores clipped to
        [1e-7, 1 - 1e-7]), ``accuracy``, ``precision`` (NaN when nothing is predicted positive), ``recall``
        (NaN without positives), ``ece`` (sum over non-empty bins of |mean score - mean label| * n_bin / n) and
        ``brier``. A single-class input gives NaN ``auc``/``pr_auc`` and a warning.

    Raises:
        MissingColumnsError: a column is missing.
        InputDataError: no rows, null/NaN labels or scores, labels other than 0/1, or (with
            ``probabilities``) scores outside [0, 1].
    """
    require_columns(df, (label_col, score_col), "click_metrics")
    if bins < 1 or auc_bins < 0:
        raise ValueError(f"click_metrics: bins must be >= 1 and auc_bins >= 0, got {bins} and {auc_bins}")
    if not 0.0 <= threshold <= 1.0 and probabilities:
        raise ValueError(f"click_metrics: threshold must be in [0, 1], got {threshold}")
    per_bin = _click_bin_stats(df, label_col, score_col, threshold=threshold, bins=bins,
                               probabilities=probabilities)
    counts = _sum_counts(per_bin)
    _check_counts(counts, "click_metrics", label_col, score_col, probabilities=probabilities)
    n = counts.rows
    positives = sum(r["_pos"] for r in per_bin)
    out: dict[str, float] = {"n": float(n), "positive_rate": positives / n}
    out |= _areas(df, label_col, score_col, n=n, positives=positives, auc_bins=auc_bins)
    out |= _probability_metrics(per_bin, n=n, positives=positives) if probabilities else dict.fromkeys(
        PROBABILITY_METRICS, NAN)
    log.info("click_metrics on %d rows (positive rate %.4f): auc=%.4f", n, out["positive_rate"], out["auc"])
    return out


def _click_bin_stats(df: DataFrame, label_col: str, score_col: str, *, threshold: float, bins: int,
                     probabilities: bool) -> list[Row]:
    """One Spark job: validation counts and every additive statistic, per calibration bin (<= bins + 1 rows)."""
    y, p = _as_double(label_col), _as_double(score_col)
    clipped = F.least(F.greatest(p, F.lit(LOG_LOSS_EPS)), F.lit(1.0 - LOG_LOSS_EPS))
    predicted = p >= F.lit(float(threshold))
    bin_ = F.least(F.floor(p * bins), F.lit(bins - 1)).cast("int") if probabilities else F.lit(0)
    return df.groupBy(bin_.alias(_BIN)).agg(
        *_validation_aggs(y, p),
        F.sum(y).alias("_pos"),
        F.sum(p).alias("_sum_score"),
        F.sum(-(y * F.log(clipped) + (1.0 - y) * F.log(1.0 - clipped))).alias("_log_loss"),
        F.sum((p - y) * (p - y)).alias("_brier"),
        F.count(F.when(predicted & (y == 1.0), 1)).alias("_tp"),
        F.count(F.when(predicted & (y == 0.0), 1)).alias("_fp"),
        F.count(F.when(~predicted & (y == 0.0), 1)).alias("_tn"),
    ).collect()


def _probability_metrics(per_bin: Sequence[Row], *, n: int, positives: float) -> dict[str, float]:
    tp, fp, tn = (sum(r[c] for r in per_bin) for c in ("_tp", "_fp", "_tn"))
    # sum_b |mean_score_b - mean_label_b| * n_b / n  ==  sum_b |sum_score_b - positives_b| / n
    ece = sum(abs(r["_sum_score"] - r["_pos"]) for r in per_bin) / n
    return {
        "log_loss": float(sum(r["_log_loss"] for r in per_bin)) / n,
        "accuracy": (tp + tn) / n,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, positives),
        "ece": float(ece),
        "brier": float(sum(r["_brier"] for r in per_bin)) / n,
    }


def _areas(df: DataFrame, label_col: str, score_col: str, *, n: int, positives: float,
           auc_bins: int) -> dict[str, float]:
    if positives == 0 or positives == n:
        log.warning("click_metrics: all %d labels are %d; auc and pr_auc are undefined (NaN)",
                    n, int(positives > 0))
        return {"auc": NAN, "pr_auc": NAN}
    data = df.select(_as_double(label_col).alias(_LABEL), _as_double(score_col).alias(_SCORE))
    evaluator = BinaryClassificationEvaluator(rawPredictionCol=_SCORE, labelCol=_LABEL, numBins=auc_bins)
    return {
        "auc": float(evaluator.evaluate(data, {evaluator.metricName: "areaUnderROC"})),
        "pr_auc": float(evaluator.evaluate(data, {evaluator.metricName: "areaUnderPR"})),
    }


# ---------------------------------------------------------------------------------------- ranking metrics


def ranking_metrics(
    df: DataFrame,
    *,
    user_col: str = S.USER_ID,
    item_col: str = S.AD_ID,
    label_col: str = S.LABEL,
    score_col: str = S.SCORE,
    ks: Sequence[int] = (5, 10),
) -> dict[str, float]:
    """Per-user ranking quality of scored candidates, averaged over users.

    Each user's candidate rows are ranked by score descending; ties are broken by item id ascending, so the
    ranking (and every metric) is deterministic. Relevant items are the rows with label 1 (binary relevance).
    Users without a relevant item are skipped and counted in ``n_users_skipped``; ``n_users`` counts the users
    evaluated. ``ndcg@K``, ``precision@K``, ``recall@K`` and ``map@K`` come from Spark's ``RankingEvaluator``
    (``pyspark.ml.evaluation``, backed by ``mllib.evaluation.RankingMetrics``); each item id is replaced by its
    1-based position in the user's ranking (a per-user one-to-one map), which gives the ``array<double>``
    columns the evaluator needs. Its definitions, checked against Spark 4.2, with R the user's relevant set,
    rel(i) = 1 if the item at position i is relevant, n the number of candidates:

    * ``precision@K`` = #relevant in the top min(K, n) / K (K, even when the user has fewer than K candidates);
    * ``recall@K`` = #relevant in the top min(K, n) / |R|;
    * ``map@K`` = sum_{i <= min(K, n)} rel(i) * precision@i / min(|R|, K);
    * ``ndcg@K`` = DCG / ideal DCG with gain rel(i) / log(i + 1), DCG summed over positions
      i <= min(max(n, |R|), K) and the ideal DCG over the first min(|R|, K) positions (binary gains).

    Computed here with Spark aggregations: ``hit_rate@K`` = share of users with a relevant item in the top K,
    and ``mrr`` = mean of 1 / (position of the first relevant item in the full ranking).

    Args:
        df: one row per (user, candidate item) with a 0/1 label and a score; an item at most once per user.
        user_col, item_col, label_col, score_col: column names.
        ks: cut-offs, positive integers.

    Returns:
        ``n_users``, ``n_users_skipped``, ``mrr`` and, for each K, ``ndcg@K``, ``precision@K``, ``recall@K``,
        ``map@K`` and ``hit_rate@K``. With no user to evaluate, the metrics are NaN and a warning is logged.

    Raises:
        MissingColumnsError: a column is missing.
        InputDataError: no rows, null/NaN values, labels other than 0/1, or an item twice for one user.
    """
    metrics, _ = _ranking(df, user_col, item_col, label_col, score_col, ks, keep_ndcg=False)
    return metrics


def ranking_metrics_with_per_user_ndcg(
    df: DataFrame,
    *,
    user_col: str = S.USER_ID,
    item_col: str = S.AD_ID,
    label_col: str = S.LABEL,
    score_col: str = S.SCORE,
    ks: Sequence[int] = (5, 10),
) -> tuple[dict[str, float], DataFrame]:
    """:func:`ranking_metrics` and, from the same ranking (one sort of each user's rows, not two), the
    :func:`per_user_ndcg` frame at the largest K: ``(user_col, ndcg)``, persisted (unpersist it when done)."""
    metrics, ndcg = _ranking(df, user_col, item_col, label_col, score_col, ks, keep_ndcg=True)
    assert ndcg is not None
    return metrics, ndcg


def _ranking(df: DataFrame, user_col: str, item_col: str, label_col: str, score_col: str, ks: Sequence[int], *,
             keep_ndcg: bool) -> tuple[dict[str, float], DataFrame | None]:
    require_columns(df, (user_col, item_col, label_col, score_col), "ranking_metrics")
    cutoffs = _check_ks(ks)
    per_user = _per_user_rankings(df, user_col, item_col, label_col, score_col, max_k=max(cutoffs)).persist()
    ndcg = None
    try:
        summary = _ranking_summary(per_user, cutoffs)
        _check_ranking_summary(summary, user_col, item_col, label_col, score_col)
        if keep_ndcg:  # materialized while the ranking is cached; small (one row per user)
            ndcg = _ndcg_per_user(per_user, user_col, max(cutoffs)).persist()
            ndcg.count()
        n_users = int(summary["_users"])
        out: dict[str, float] = {"n_users": float(n_users), "n_users_skipped": float(summary["_skipped"])}
        if n_users == 0:
            log.warning("ranking_metrics: no user has a relevant item; ranking metrics are NaN")
            return out | _nan_ranking_metrics(cutoffs), ndcg
        evaluated = per_user.where(F.col("_n_pos") > 0).select("prediction", "relevant")
        for k in cutoffs:
            out |= _evaluator_metrics(evaluated, k)
            out[f"hit_rate@{k}"] = summary[f"_hits_{k}"] / n_users
        out["mrr"] = float(summary["_rr"]) / n_users
    finally:
        per_user.unpersist()
    log.info("ranking_metrics over %d users (%d skipped without a relevant item)", n_users,
             int(out["n_users_skipped"]))
    return out, ndcg


def per_user_ndcg(
    df: DataFrame,
    *,
    user_col: str = S.USER_ID,
    item_col: str = S.AD_ID,
    label_col: str = S.LABEL,
    score_col: str = S.SCORE,
    k: int = 10,
) -> DataFrame:
    """``(user_col, ndcg)``: each user's NDCG@K, for the users with a relevant item, with the ranking (ties by
    item id) and the definition of :func:`ranking_metrics` (its ``ndcg@K`` is the mean of this column). For
    paired comparisons of two methods over the same users; validate the input with :func:`ranking_metrics`."""
    require_columns(df, (user_col, item_col, label_col, score_col), "per_user_ndcg")
    (k,) = _check_ks([k])
    return _ndcg_per_user(_per_user_rankings(df, user_col, item_col, label_col, score_col, max_k=k), user_col, k)


def _ndcg_per_user(per_user: DataFrame, user_col: str, k: int) -> DataFrame:
    gain = lambda acc, pos: acc + F.lit(1.0) / F.log2(pos + F.lit(1.0))  # noqa: E731
    dcg = F.aggregate(F.filter("relevant", lambda pos: pos <= F.lit(float(k))), F.lit(0.0), gain)
    ideal = F.aggregate(F.sequence(F.lit(1), F.least(F.col("_n_pos"), F.lit(k))).cast("array<double>"),
                        F.lit(0.0), gain)
    return per_user.where(F.col("_n_pos") > 0).select(user_col, (dcg / ideal).alias("ndcg"))


def paired_difference(a: DataFrame, b: DataFrame, *, key: str = S.USER_ID, value: str = "ndcg",
                      z: float = 1.96) -> dict[str, float]:
    """How much ``a`` beats ``b`` per key (user), over the keys in both: the mean of ``a - b``, the normal
    approximation confidence interval ``mean +- z * sd / sqrt(n)`` (sample sd; z = 1.96 for 95%), and how many
    keys ``a`` is better and worse on. Aggregated in Spark; NaN interval with fewer than 2 keys."""
    require_columns(a, (key, value), "paired_difference (a)")
    require_columns(b, (key, value), "paired_difference (b)")
    joined = a.select(key, F.col(value).alias("_a")).join(b.select(key, F.col(value).alias("_b")), key)
    d = F.col("_a") - F.col("_b")
    r = joined.agg(F.count(F.lit(1)).alias("n"), F.avg(d).alias("mean"), F.stddev_samp(d).alias("sd"),
                   F.count(F.when(d > 0, 1)).alias("better"), F.count(F.when(d < 0, 1)).alias("worse")).first()
    n = int(r["n"])
    mean = float(r["mean"]) if n else NAN
    half = z * float(r["sd"]) / math.sqrt(n) if n > 1 and r["sd"] is not None else NAN
    return {"diff": mean, "ci_low": mean - half, "ci_high": mean + half, "n_users": float(n),
            "users_better": float(r["better"]), "users_worse": float(r["worse"])}


def _check_ks(ks: Sequence[int]) -> list[int]:
    cutoffs = sorted({int(k) for k in ks})
    if not cutoffs or cutoffs[0] < 1 or any(int(k) != k for k in ks):
        raise ValueError(f"ranking_metrics: ks must be positive integers, got {list(ks)!r}")
    return cutoffs


def _per_user_rankings(df: DataFrame, user_col: str, item_col: str, label_col: str, score_col: str, *,
                       max_k: int) -> DataFrame:
    """One row per user: validation counts, first relevant position and the evaluator's two arrays."""
    y, p = _as_double(label_col), _as_double(score_col)
    order = Window.partitionBy(user_col).orderBy(F.col(_SCORE).desc(), F.col(item_col).asc())
    ranked = (df.select(F.col(user_col), F.col(item_col), y.alias(_LABEL), p.alias(_SCORE))
              .withColumn(_POS, F.row_number().over(order)))
    label, score = F.col(_LABEL), F.col(_SCORE)
    relevant = label == 1.0
    per_user = ranked.groupBy(user_col).agg(
        F.count(F.lit(1)).alias("_rows"),
        F.count(F.when(F.col(user_col).isNull() | F.col(item_col).isNull(), 1)).alias("_null_key"),
        F.count(F.when(_null_or_nan(label), 1)).alias("_null_label"),
        F.count(F.when(_null_or_nan(score), 1)).alias("_null_score"),
        F.count(F.when(~_null_or_nan(label) & ~label.isin(0.0, 1.0), 1)).alias("_bad_label"),
        F.countDistinct(item_col).alias("_items"),
        F.count(F.when(relevant, 1)).alias("_n_pos"),
        F.min(F.when(relevant, F.col(_POS))).alias("_first_hit"),
        F.collect_list(F.when(relevant, F.col(_POS).cast("double"))).alias("relevant"),
    )
    # Positions beyond the largest K never change an @K metric, so the prediction array stops there.
    prediction = F.sequence(F.lit(1), F.least(F.col("_rows"), F.lit(max_k))).cast("array<double>")
    return per_user.withColumn("prediction", prediction)


def _ranking_summary(per_user: DataFrame, cutoffs: Sequence[int]) -> Row:
    has_pos = F.col("_n_pos") > 0
    hits = [F.count(F.when(has_pos & (F.col("_first_hit") <= k), 1)).alias(f"_hits_{k}") for k in cutoffs]
    return per_user.agg(
        *(F.coalesce(F.sum(c), F.lit(0)).alias(c) for c in ("_rows", "_null_key", "_null_label", "_null_score",
                                                            "_bad_label")),
        F.coalesce(F.sum(F.col("_rows") - F.col("_items")), F.lit(0)).alias("_duplicates"),
        F.count(F.when(has_pos, 1)).alias("_users"),
        F.count(F.when(~has_pos, 1)).alias("_skipped"),
        F.coalesce(F.sum(F.when(has_pos, 1.0 / F.col("_first_hit"))), F.lit(0.0)).alias("_rr"),
        *hits,
    ).first()


def _check_ranking_summary(s: Row, user_col: str, item_col: str, label_col: str, score_col: str) -> None:
    where = "ranking_metrics"
    if s["_null_key"]:
        raise InputDataError(f"{where}: {s['_null_key']} of {s['_rows']} row(s) have a null {user_col!r} or "
                             f"{item_col!r}; fix or drop them before evaluating")
    counts = _Counts(rows=s["_rows"], null_label=s["_null_label"], null_score=s["_null_score"],
                     bad_label=s["_bad_label"])
    _check_counts(counts, where, label_col, score_col, probabilities=False)
    if s["_duplicates"]:
        raise InputDataError(f"{where}: {s['_duplicates']} duplicate ({user_col}, {item_col}) row(s); "
                             "each candidate item must appear once per user")


def _evaluator_metrics(evaluated: DataFrame, k: int) -> dict[str, float]:
    evaluator = RankingEvaluator(predictionCol="prediction", labelCol="relevant", k=k)
    return {f"{name}@{k}": float(evaluator.evaluate(evaluated, {evaluator.metricName: metric}))
            for name, metric in _RANKING_EVALUATOR_METRICS.items()}


def _nan_ranking_metrics(cutoffs: Sequence[int]) -> dict[str, float]:
    out = {f"{name}@{k}": NAN for k in cutoffs for name in (*_RANKING_EVALUATOR_METRICS, "hit_rate")}
    return out | {"mrr": NAN}


# ------------------------------------------------------------------------------------------- score curves


def score_curves(
    df: DataFrame,
    *,
    label_col: str = S.LABEL,
    score_col: str = S.SCORE,
    n_bins: int = 200,
    calibration_bins: int = 10,
    probabilities: bool = True,
) -> dict[str, pd.DataFrame]:
    """Plotting data for ROC, precision-recall and reliability diagrams, in two Spark jobs.

    Thresholds are the distinct approximate quantiles of the score (``percentile_approx`` at ``n_bins`` + 1
    evenly spaced levels). Positive and negative counts per threshold bucket are aggregated in Spark; the
    cumulative sums (at most ``n_bins`` + 2 rows) are taken on the driver. Each threshold t predicts
    ``score >= t``.

    Args:
        df: rows with a 0/1 label and a score.
        label_col, score_col: column names.
        n_bins: number of quantile levels used as thresholds.
        calibration_bins: equal-width bins over [0, 1] for the reliability diagram.
        probabilities: False for scores that are not probabilities; the calibration frame is then empty.

    Returns:
        ``roc`` (fpr, tpr; from (0, 0) to (1, 1)), ``pr`` (recall, precision; starting at recall 0 with the
        precision of the highest threshold) and ``calibration`` (bin, mean_score, frac_positive, count; non-empty
        bins only). ``roc`` and ``pr`` are empty (with a warning) when the labels hold a single class.

    Raises:
        MissingColumnsError, InputDataError: as :func:`click_metrics`.
    """
    require_columns(df, (label_col, score_col), "score_curves")
    if n_bins < 1 or calibration_bins < 1:
        raise ValueError(f"score_curves: n_bins and calibration_bins must be >= 1, got {n_bins}, {calibration_bins}")
    y, p = _as_double(label_col), _as_double(score_col)
    levels = [i / n_bins for i in range(n_bins + 1)]
    stats = df.agg(*_validation_aggs(y, p), F.sum(y).alias("_pos"),
                   F.percentile_approx(p, levels, max(10_000, 10 * n_bins)).alias("_quantiles")).first()
    _check_counts(_sum_counts([stats]), "score_curves", label_col, score_col, probabilities=probabilities)
    thresholds = sorted(set(stats["_quantiles"]))
    buckets = _bucket_counts(df.select(y.alias(_LABEL), p.alias(_SCORE)), thresholds, calibration_bins,
                             probabilities=probabilities)
    n, positives = stats["_rows"], float(stats["_pos"])
    roc, pr = _roc_pr(buckets, n_thresholds=len(thresholds), positives=positives, negatives=n - positives)
    calibration = _calibration(buckets) if probabilities else _empty(("bin", "mean_score", "frac_positive", "count"))
    return {"roc": roc, "pr": pr, "calibration": calibration}


def _bucket_counts(data: DataFrame, thresholds: Sequence[float], calibration_bins: int, *,
                   probabilities: bool) -> pd.DataFrame:
    """Counts per (threshold bucket, calibration bin); bucket j holds thresholds[j-1] <= score < thresholds[j]."""
    splits = [-math.inf, *thresholds, math.inf]
    bucketed = Bucketizer(splits=splits, inputCol=_SCORE, outputCol=_BUCKET).transform(data)
    cal_bin = (F.least(F.floor(F.col(_SCORE) * calibration_bins), F.lit(calibration_bins - 1)).cast("int")
               if probabilities else F.lit(0))
    rows = bucketed.groupBy(F.col(_BUCKET).cast("int").alias("bucket"), cal_bin.alias("bin")).agg(
        F.count(F.lit(1)).alias("count"),
        F.sum(_LABEL).alias("positives"),
        F.sum(_SCORE).alias("sum_score"),
    ).collect()
    return pd.DataFrame([r.asDict() for r in rows], columns=["bucket", "bin", "count", "positives", "sum_score"])


def _roc_pr(buckets: pd.DataFrame, *, n_thresholds: int, positives: float,
            negatives: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    if positives == 0 or negatives == 0:
        log.warning("score_curves: the labels hold a single class; ROC and PR curves are empty")
        return _empty(("fpr", "tpr")), _empty(("recall", "precision"))
    per_bucket = buckets.groupby("bucket")[["count", "positives"]].sum()
    per_bucket = per_bucket.reindex(range(n_thresholds + 1), fill_value=0).sort_index(ascending=False)
    tp = per_bucket["positives"].cumsum().to_numpy(dtype=float)  # predicted positive at thresholds[j - 1]
    fp = (per_bucket["count"] - per_bucket["positives"]).cumsum().to_numpy(dtype=float)
    roc = pd.DataFrame({"fpr": [0.0, *(fp / negatives)], "tpr": [0.0, *(tp / positives)]})
    keep = (tp + fp) > 0
    recall, precision = tp[keep] / positives, tp[keep] / (tp[keep] + fp[keep])
    pr = pd.DataFrame({"recall": [0.0, *recall], "precision": [precision[0], *precision]})
    return roc.drop_duplicates(ignore_index=True), pr.drop_duplicates(ignore_index=True)


def _calibration(buckets: pd.DataFrame) -> pd.DataFrame:
    per_bin = buckets.groupby("bin")[["count", "positives", "sum_score"]].sum().reset_index()
    return pd.DataFrame({
        "bin": per_bin["bin"].astype(int),
        "mean_score": per_bin["sum_score"] / per_bin["count"],
        "frac_positive": per_bin["positives"] / per_bin["count"],
        "count": per_bin["count"].astype(int),
    }).sort_values("bin", ignore_index=True)


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=float) for c in columns})
