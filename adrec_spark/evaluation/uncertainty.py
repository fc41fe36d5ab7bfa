"""How far a metric can be trusted: the n it rests on, an interval, and a flag when its value means nothing.

* AUC: DeLong's variance, from placement values aggregated in Spark (one row per distinct score reaches a
  single window, only sums reach the driver); a normal interval clipped to [0, 1].
* Ranking metrics (``ndcg``, ``precision``, ``recall``, ``map``, ``hit_rate`` @K and ``mrr``): a percentile
  bootstrap over users of the per-user values, from one small row per ranked user (its relevant positions up
  to the largest K).
* Pointwise metrics (``positive_rate``, ``log_loss``, ``brier``, ``accuracy``, ``precision``, ``recall``): a
  percentile bootstrap over users of per-user sums (a user's rows are resampled together).
* ``pr_auc`` and ``ece`` get no interval (NaN).

Flags (comma-separated in ``flag``): ``degenerate`` (the value is fixed by construction: hit rate or recall @K
when every ranked user has at most K candidates), ``empty_input`` (most of the method's inputs are empty,
e.g. a text baseline on rows without history), ``small_n`` (fewer users or positives than the configured
minimum: too few to tell methods apart) and ``undefined`` (NaN: e.g. AUC on one class).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.frames import require_columns

NAN = float("nan")
DEGENERATE, EMPTY_INPUT, SMALL_N, UNDEFINED = "degenerate", "empty_input", "small_n", "undefined"
CLICK_BOOTSTRAP = ("positive_rate", "log_loss", "brier", "accuracy", "precision", "recall")
_EPS = 1e-7


@dataclass(frozen=True)
class MetricInfo:
    """What one metric value rests on: rows, positives and users, its interval and its flags."""

    n_rows: float = NAN
    n_positives: float = NAN
    n_users: float = NAN
    ci_low: float = NAN
    ci_high: float = NAN
    flag: str = ""

    def flagged(self, *flags: str) -> MetricInfo:
        names = [f for f in (*self.flag.split(","), *flags) if f]
        return replace(self, flag=",".join(dict.fromkeys(names)))


# ------------------------------------------------------------------------------------------------- DeLong


def delong_auc_variance(labels: Sequence[float], scores: Sequence[float]) -> tuple[float, float]:
    """(AUC, DeLong's variance) in numpy, from placement values with ties counted half (DeLong et al. 1988):
    V10(x) = share of negatives below positive x, V01(y) = share of positives above negative y;
    AUC = mean V10, var = s^2(V10) / m + s^2(V01) / n (sample variances). NaN without both classes."""
    y, s = np.asarray(labels, dtype=float), np.asarray(scores, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return NAN, NAN
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    below = np.searchsorted(neg_sorted, pos, "left")
    ties = np.searchsorted(neg_sorted, pos, "right") - below
    v10 = (below + 0.5 * ties) / n
    above = m - np.searchsorted(pos_sorted, neg, "right")
    tie_p = np.searchsorted(pos_sorted, neg, "right") - np.searchsorted(pos_sorted, neg, "left")
    v01 = (above + 0.5 * tie_p) / m
    var = (np.var(v10, ddof=1) / m if m > 1 else 0.0) + (np.var(v01, ddof=1) / n if n > 1 else 0.0)
    return float(v10.mean()), float(var)


def auc_delong(df: DataFrame, *, label_col: str = S.LABEL, score_col: str = S.SCORE) -> tuple[float, float]:
    """(AUC, DeLong's variance) computed in Spark as :func:`delong_auc_variance` does: positives and negatives
    per distinct score, cumulative counts over the scores in order, then the sums of the placement values and
    of their squares. Validate the input first (:func:`metrics.click_metrics`)."""
    require_columns(df, (label_col, score_col), "auc_delong")
    y = F.col(label_col).cast("double")
    per_score = df.groupBy(F.col(score_col).cast("double").alias("_s")).agg(
        F.sum(F.when(y == 1.0, 1).otherwise(0)).alias("_p"), F.sum(F.when(y == 0.0, 1).otherwise(0)).alias("_n"))
    upto = Window.orderBy("_s").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    total = Window.partitionBy(F.lit(1))
    cum = (per_score.withColumn("_cp", F.sum("_p").over(upto)).withColumn("_cn", F.sum("_n").over(upto))
           .withColumn("_m", F.sum("_p").over(total)).withColumn("_nn", F.sum("_n").over(total)))
    v10 = (F.col("_cn") - F.col("_n") + 0.5 * F.col("_n")) / F.col("_nn")
    v01 = (F.col("_m") - F.col("_cp") + 0.5 * F.col("_p")) / F.col("_m")
    r = cum.agg(F.sum(F.col("_p") * v10).alias("s10"), F.sum(F.col("_p") * v10 * v10).alias("q10"),
                F.sum(F.col("_n") * v01).alias("s01"), F.sum(F.col("_n") * v01 * v01).alias("q01"),
                F.sum("_p").alias("m"), F.sum("_n").alias("n")).first()
    m, n = int(r["m"] or 0), int(r["n"] or 0)
    if m == 0 or n == 0:
        return NAN, NAN
    var10 = (r["q10"] - r["s10"] ** 2 / m) / (m - 1) if m > 1 else 0.0
    var01 = (r["q01"] - r["s01"] ** 2 / n) / (n - 1) if n > 1 else 0.0
    return float(r["s10"] / m), float(max(var10, 0.0) / m + max(var01, 0.0) / n)


def normal_interval(value: float, variance: float, confidence: float) -> tuple[float, float]:
    """value -+ z * sqrt(variance), clipped to [0, 1]."""
    if not (math.isfinite(value) and math.isfinite(variance)):
        return NAN, NAN
    from statistics import NormalDist

    half = NormalDist().inv_cdf(0.5 + confidence / 2) * math.sqrt(max(variance, 0.0))
    return max(0.0, value - half), min(1.0, value + half)


# ---------------------------------------------------------------------------------------------- bootstrap


def bootstrap_indices(n_users: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n_users) user indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n_users, size=(samples, n_users))


def _percentiles(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    stats = stats[np.isfinite(stats)]
    if len(stats) == 0:
        return NAN, NAN
    lo, hi = np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def bootstrap_mean_intervals(values: Mapping[str, np.ndarray], *, samples: int, confidence: float,
                             seed: int) -> dict[str, tuple[float, float]]:
    """Per metric, the percentile interval of the mean of per-user values over ``samples`` resamples of the
    users (the same resamples for every metric)."""
    n = len(next(iter(values.values()))) if values else 0
    if n < 2 or samples < 1:
        return {k: (NAN, NAN) for k in values}
    idx = bootstrap_indices(n, samples, seed)
    return {k: _percentiles(np.asarray(v, dtype=float)[idx].mean(axis=1), confidence) for k, v in values.items()}


def user_click_sums(df: DataFrame, *, user_col: str = S.USER_ID, label_col: str = S.LABEL,
                    score_col: str = S.SCORE, threshold: float = 0.5) -> pd.DataFrame:
    """One row per user (to the driver): rows, positives, and the sums behind the pointwise metrics."""
    require_columns(df, (user_col, label_col, score_col), "user_click_sums")
    y, p = F.col(label_col).cast("double"), F.col(score_col).cast("double")
    c = F.least(F.greatest(p, F.lit(_EPS)), F.lit(1.0 - _EPS))
    hit = p >= F.lit(float(threshold))
    return df.groupBy(user_col).agg(
        F.count(F.lit(1)).alias("rows"), F.sum(y).alias("pos"),
        F.sum(-(y * F.log(c) + (1.0 - y) * F.log(1.0 - c))).alias("log_loss"),
        F.sum((p - y) * (p - y)).alias("brier"),
        F.count(F.when(hit & (y == 1.0), 1)).alias("tp"), F.count(F.when(hit & (y == 0.0), 1)).alias("fp"),
        F.count(F.when(~hit & (y == 0.0), 1)).alias("tn")).toPandas()


def click_bootstrap_intervals(sums: pd.DataFrame, *, probabilities: bool, samples: int, confidence: float,
                              seed: int) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the pointwise metrics (ratios of sums) over resamples of the users."""
    names = ("positive_rate", *(CLICK_BOOTSTRAP[1:] if probabilities else ()))
    if len(sums) < 2 or samples < 1:
        return {k: (NAN, NAN) for k in names}
    idx = bootstrap_indices(len(sums), samples, seed)
    tot = {c: sums[c].to_numpy(dtype=float)[idx].sum(axis=1) for c in ("rows", "pos", "log_loss", "brier", "tp",
                                                                        "fp", "tn")}
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = {"positive_rate": tot["pos"] / tot["rows"], "log_loss": tot["log_loss"] / tot["rows"],
                 "brier": tot["brier"] / tot["rows"], "accuracy": (tot["tp"] + tot["tn"]) / tot["rows"],
                 "precision": tot["tp"] / (tot["tp"] + tot["fp"]), "recall": tot["tp"] / tot["pos"]}
    return {k: _percentiles(stats[k], confidence) for k in names}


# ---------------------------------------------------------------------------------------- ranking, per user


def user_rankings(df: DataFrame, *, user_col: str = S.USER_ID, item_col: str = S.AD_ID, label_col: str = S.LABEL,
                  score_col: str = S.SCORE, max_k: int) -> pd.DataFrame:
    """One row per user with a relevant item (to the driver): ``rows`` (candidates), ``n_pos``, ``first_hit``
    and ``positions`` (the relevant positions up to ``max_k``), ranked as :func:`metrics.ranking_metrics`
    ranks (score descending, ties by item id)."""
    require_columns(df, (user_col, item_col, label_col, score_col), "user_rankings")
    order = Window.partitionBy(user_col).orderBy(F.col(score_col).cast("double").desc(), F.col(item_col).asc())
    rel = F.col(label_col).cast("double") == 1.0
    ranked = df.select(user_col, item_col, label_col, score_col).withColumn("_pos", F.row_number().over(order))
    per_user = ranked.groupBy(user_col).agg(
        F.count(F.lit(1)).alias("rows"), F.count(F.when(rel, 1)).alias("n_pos"),
        F.min(F.when(rel, F.col("_pos"))).alias("first_hit"),
        F.sort_array(F.collect_list(F.when(rel & (F.col("_pos") <= max_k), F.col("_pos")))).alias("positions"))
    return per_user.where(F.col("n_pos") > 0).toPandas()


def per_user_ranking_values(users: pd.DataFrame, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Each ranked user's ndcg, precision, recall, map and hit rate at each K and reciprocal rank, with the
    definitions of :func:`metrics.ranking_metrics` (its values are the means of these)."""
    out: dict[str, list[float]] = {}
    for positions, n_pos, first in zip(users["positions"], users["n_pos"], users["first_hit"], strict=True):
        pos = np.asarray(positions if positions is not None else [], dtype=float)
        for k in ks:
            top = pos[pos <= k]
            ideal = (1.0 / np.log2(np.arange(1, min(n_pos, k) + 1) + 1.0)).sum()
            ap = (np.arange(1, len(top) + 1) / top).sum() / min(n_pos, k)
            for name, v in ((f"ndcg@{k}", (1.0 / np.log2(top + 1.0)).sum() / ideal),
                            (f"precision@{k}", len(top) / k), (f"recall@{k}", len(top) / n_pos),
                            (f"map@{k}", ap), (f"hit_rate@{k}", float(len(top) > 0))):
                out.setdefault(name, []).append(float(v))
        out.setdefault("mrr", []).append(1.0 / float(first))
    return {k: np.asarray(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------- flags


def ranking_flags(metric: str, *, n_users: float, max_candidates: float, min_users: int) -> list[str]:
    """``degenerate``: hit rate or recall @K when no ranked user has more than K candidates (every relevant
    item is in the top K, so the value is 1 for any order); ``small_n``: fewer ranked users than
    ``min_users``."""
    name, _, k = metric.partition("@")
    flags = []
    if k and name in ("hit_rate", "recall") and math.isfinite(max_candidates) and max_candidates <= int(k):
        flags.append(DEGENERATE)
    if not n_users >= min_users:
        flags.append(SMALL_N)
    return flags


def click_flags(*, n_positives: float, n_rows: float, min_positives: int) -> list[str]:
    """``small_n`` when either class has fewer rows than ``min_positives``."""
    negatives = n_rows - n_positives
    return [SMALL_N] if not (n_positives >= min_positives and negatives >= min_positives) else []


# ---------------------------------------------------------------------------------------------- per method


@dataclass(frozen=True)
class IntervalSettings:
    """``evaluate``'s interval and flag settings."""

    samples: int = 500
    confidence: float = 0.95
    seed: int = 7
    min_users: int = 30
    min_positives: int = 30


def click_info(df: DataFrame, click: Mapping[str, float], *, score_col: str, probabilities: bool, threshold: float,
               settings: IntervalSettings, user_col: str = S.USER_ID,
               label_col: str = S.LABEL) -> dict[str, MetricInfo]:
    """n, interval and flags of each pointwise metric in ``click`` (:func:`metrics.click_metrics`' result)."""
    n_rows = float(click["n"])
    n_pos = round(n_rows * float(click["positive_rate"]))
    sums = user_click_sums(df, user_col=user_col, label_col=label_col, score_col=score_col, threshold=threshold)
    base = MetricInfo(n_rows=n_rows, n_positives=float(n_pos), n_users=float(len(sums)))
    small = click_flags(n_positives=n_pos, n_rows=n_rows, min_positives=settings.min_positives)
    cis = click_bootstrap_intervals(sums, probabilities=probabilities, samples=settings.samples,
                                    confidence=settings.confidence, seed=settings.seed)
    if math.isfinite(float(click.get("auc", NAN))):
        _, var = auc_delong(df, label_col=label_col, score_col=score_col)
        cis["auc"] = normal_interval(float(click["auc"]), var, settings.confidence)
    out = {}
    for metric, value in click.items():
        lo, hi = cis.get(metric, (NAN, NAN))
        info = replace(base, ci_low=lo, ci_high=hi)
        if metric != "n":
            info = info.flagged(*small, *([UNDEFINED] if not math.isfinite(float(value)) else []))
        out[metric] = info
    return out


def ranking_info(ranked: DataFrame, ranking: Mapping[str, float], *, score_col: str, ks: Sequence[int],
                 settings: IntervalSettings, user_col: str = S.USER_ID) -> dict[str, MetricInfo]:
    """n, bootstrap interval over users and flags of each metric in ``ranking`` (:func:`metrics.ranking_metrics`'
    result for ``ranked``: one row per user and item)."""
    users = user_rankings(ranked, user_col=user_col, score_col=score_col, max_k=max(ks))
    values = per_user_ranking_values(users, ks) if len(users) else {}
    cis = bootstrap_mean_intervals(values, samples=settings.samples, confidence=settings.confidence,
                                   seed=settings.seed) if values else {}
    n_users = float(len(users))
    max_candidates = float(users["rows"].max()) if len(users) else NAN
    base = MetricInfo(n_rows=float(users["rows"].sum()) if len(users) else 0.0,
                      n_positives=float(users["n_pos"].sum()) if len(users) else 0.0, n_users=n_users)
    out = {}
    for metric, value in ranking.items():
        if metric in ("n_users", "n_users_skipped"):
            out[metric] = base
            continue
        lo, hi = cis.get(metric, (NAN, NAN))
        flags = ranking_flags(metric, n_users=n_users, max_candidates=max_candidates,
                              min_users=settings.min_users)
        out[metric] = replace(base, ci_low=lo, ci_high=hi).flagged(
            *flags, *([UNDEFINED] if not math.isfinite(float(value)) else []))
    return out
