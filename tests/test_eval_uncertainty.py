"""n, intervals and flags of the evaluation metrics: DeLong by hand, the bootstrap against a brute-force numpy
bootstrap, the flags on hand-made degenerate data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from adrec_spark.evaluation import uncertainty as U
from adrec_spark.evaluation.metrics import click_metrics, ranking_metrics

RANK_SCHEMA = "user_id string, ad_id string, label int, score double"


def _brute_delong(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """Placement values pair by pair (O(m n)), straight from DeLong et al. (1988)."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)


def test_delong_on_a_hand_computed_example(spark) -> None:
    # positives 0.9, 0.4; negatives 0.5, 0.3, 0.1. V10 = (1, 2/3), V01 = (1/2, 1, 1): AUC 5/6,
    # s2(V10) = 1/18, s2(V01) = 1/12, var = (1/18) / 2 + (1/12) / 3 = 1/18
    y, s = [1, 1, 0, 0, 0], [0.9, 0.4, 0.5, 0.3, 0.1]
    auc, var = U.delong_auc_variance(y, s)
    assert auc == pytest.approx(5 / 6) and var == pytest.approx(1 / 18)
    df = spark.createDataFrame(list(zip(y, s, strict=True)), "label int, score double")
    got = U.auc_delong(df)
    assert got[0] == pytest.approx(5 / 6) and got[1] == pytest.approx(1 / 18)
    lo, hi = U.normal_interval(5 / 6, 1 / 18, 0.95)
    assert lo == pytest.approx(5 / 6 - 1.959964 * math.sqrt(1 / 18), abs=1e-5) and hi == 1.0  # clipped


def test_delong_with_ties_against_pairwise_placements_and_sklearn(spark) -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(0.3 * y + rng.uniform(0, 1, 300), 1)  # many ties
    want_auc, want_var = _brute_delong(y, s)
    assert want_auc == pytest.approx(skm.roc_auc_score(y, s))
    assert U.delong_auc_variance(y, s) == pytest.approx((want_auc, want_var))
    df = spark.createDataFrame([(int(a), float(b)) for a, b in zip(y, s, strict=True)], "label int, score double")
    assert U.auc_delong(df) == pytest.approx((want_auc, want_var))
    assert all(math.isnan(v) for v in U.delong_auc_variance([1, 1], [0.2, 0.3]))


def _ranking_rows(n_users: int, seed: int = 5) -> list[tuple[str, str, int, float]]:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(1, 9))
        labels = rng.integers(0, 2, n)
        for i in range(n):
            rows.append((f"u{u}", f"a{i}", int(labels[i]), float(np.round(rng.uniform(), 1))))
    return rows


def _naive_user_metrics(items: list[tuple[str, int, float]], k: int) -> dict[str, float]:
    """One user's metrics from the definitions (ranked by score desc, ties by item id)."""
    ranked = sorted(items, key=lambda t: (-t[2], t[0]))
    rel = [lab for _, lab, _ in ranked]
    n_rel = sum(rel)
    top = rel[:k]
    dcg = sum(r / math.log2(i + 2) for i, r in enumerate(top))
    ideal = sum(1 / math.log2(i + 2) for i in range(min(n_rel, k)))
    hits = np.cumsum(top)
    ap = sum(hits[i] / (i + 1) for i, r in enumerate(top) if r) / min(n_rel, k)
    return {f"ndcg@{k}": dcg / ideal, f"precision@{k}": sum(top) / k, f"recall@{k}": sum(top) / n_rel,
            f"map@{k}": ap, f"hit_rate@{k}": float(sum(top) > 0), "mrr": 1 / (rel.index(1) + 1)}


def test_per_user_values_average_to_the_spark_metrics_and_the_bootstrap_matches_numpy(spark) -> None:
    rows = _ranking_rows(60)
    df = spark.createDataFrame(rows, RANK_SCHEMA)
    k = 3
    spark_metrics = ranking_metrics(df, ks=[k])
    users = U.user_rankings(df, max_k=k)
    values = U.per_user_ranking_values(users, [k])
    for name, v in values.items():
        assert v.mean() == pytest.approx(spark_metrics[name], abs=1e-9), name
    # brute force: per user from the definitions, then 3000 resamples of the users in a plain loop
    by_user: dict[str, list] = {}
    for u, a, lab, s in rows:
        by_user.setdefault(u, []).append((a, lab, s))
    naive = [_naive_user_metrics(v, k) for v in by_user.values() if any(lab for _, lab, _ in v)]
    assert len(naive) == len(users)
    rng = np.random.default_rng(11)
    got = U.bootstrap_mean_intervals(values, samples=3000, confidence=0.9, seed=1)
    for name in values:
        col = np.array([m[name] for m in naive])
        means = [col[rng.integers(0, len(col), len(col))].mean() for _ in range(3000)]
        lo, hi = np.quantile(means, [0.05, 0.95])
        assert got[name] == pytest.approx((lo, hi), abs=0.02), name
        assert got[name][0] <= spark_metrics[name] <= got[name][1]


def test_click_bootstrap_matches_a_numpy_loop(spark) -> None:
    rng = np.random.default_rng(2)
    rows = [(f"u{i % 40}", int(rng.integers(0, 2)), float(rng.uniform(0.01, 0.99))) for i in range(400)]
    df = spark.createDataFrame(rows, "user_id string, label int, score double")
    sums = U.user_click_sums(df, threshold=0.5)
    got = U.click_bootstrap_intervals(sums, probabilities=True, samples=3000, confidence=0.9, seed=4)
    frame = pd.DataFrame(rows, columns=["user", "y", "p"])
    groups = [g for _, g in frame.groupby("user")]
    stats: dict[str, list[float]] = {"positive_rate": [], "brier": [], "accuracy": []}
    for _ in range(3000):
        sample = pd.concat([groups[j] for j in rng.integers(0, len(groups), len(groups))])
        stats["positive_rate"].append(sample["y"].mean())
        stats["brier"].append(((sample["p"] - sample["y"]) ** 2).mean())
        stats["accuracy"].append(((sample["p"] >= 0.5) == sample["y"]).mean())
    for name, values in stats.items():
        assert got[name] == pytest.approx(tuple(np.quantile(values, [0.05, 0.95])), abs=0.01), name


def test_hit_rate_is_flagged_degenerate_when_every_user_has_at_most_k_candidates(spark) -> None:
    # 3 users, at most 2 candidates each, one click each: hit rate@2 and recall@2 are 1 for any order
    rows = [("u1", "a1", 1, 0.1), ("u1", "a2", 0, 0.9), ("u2", "a1", 0, 0.3), ("u2", "a3", 1, 0.2),
            ("u3", "a2", 1, 0.5)]
    df = spark.createDataFrame(rows, RANK_SCHEMA)
    ranking = ranking_metrics(df, ks=[1, 2])
    assert ranking["hit_rate@2"] == 1.0
    info = U.ranking_info(df, ranking, score_col="score", ks=[1, 2], settings=U.IntervalSettings(min_users=2))
    assert info["hit_rate@2"].flag == "degenerate" and info["recall@2"].flag == "degenerate"
    assert info["hit_rate@1"].flag == "" and info["ndcg@2"].flag == ""  # not fixed by construction
    assert (info["ndcg@2"].n_users, info["ndcg@2"].n_rows, info["ndcg@2"].n_positives) == (3, 5, 3)
    small = U.ranking_info(df, ranking, score_col="score", ks=[1, 2], settings=U.IntervalSettings(min_users=30))
    assert small["ndcg@2"].flag == "small_n" and small["hit_rate@2"].flag == "degenerate,small_n"


def test_click_info_counts_flags_and_intervals(spark) -> None:
    rows = [("u1", 1, 0.9), ("u1", 0, 0.2), ("u2", 0, 0.4), ("u2", 1, 0.6), ("u3", 0, 0.1)]
    df = spark.createDataFrame(rows, "user_id string, label int, score double")
    click = click_metrics(df)
    info = U.click_info(df, click, score_col="score", probabilities=True, threshold=0.5,
                        settings=U.IntervalSettings(samples=200, min_positives=3))
    assert (info["auc"].n_rows, info["auc"].n_positives, info["auc"].n_users) == (5, 2, 3)
    assert info["auc"].flag == "small_n"  # 2 positives < 3
    assert info["n"].flag == ""
    _, var = U.delong_auc_variance([1, 0, 0, 1, 0], [0.9, 0.2, 0.4, 0.6, 0.1])
    assert (info["auc"].ci_low, info["auc"].ci_high) == pytest.approx(U.normal_interval(click["auc"], var, 0.95))
    assert math.isnan(info["pr_auc"].ci_low)  # no interval for pr_auc
    one_class = spark.createDataFrame([("u1", 0, 0.3), ("u2", 0, 0.4)], "user_id string, label int, score double")
    c1 = click_metrics(one_class)
    i1 = U.click_info(one_class, c1, score_col="score", probabilities=True, threshold=0.5,
                      settings=U.IntervalSettings(samples=10, min_positives=0))
    assert i1["auc"].flag == "small_n,undefined" or i1["auc"].flag == "undefined"


def test_text_only_baseline_on_empty_histories_is_flagged(spark, cfg) -> None:
    from dataclasses import replace

    from adrec_spark.evaluation import pipeline

    rows = [("u1", "a1", 1, "", 0.9, 0.3), ("u1", "a2", 0, "", 0.2, 0.5), ("u2", "a1", 0, "clicked: x", 0.4, 0.1),
            ("u2", "a3", 1, "", 0.6, 0.7), ("u3", "a2", 1, "", 0.5, 0.2), ("u3", "a1", 0, "", 0.1, 0.6)]
    df = spark.createDataFrame(rows, "user_id string, ad_id string, label int, history_text string, "
                                     "random double, pretrained double")
    small = replace(cfg, evaluate=replace(cfg.evaluate, bootstrap_samples=50, ks=(1,)))
    table, _, per_user, info = pipeline.method_metrics(df, ["random", "pretrained"], small)
    pipeline.release(per_user)
    assert "empty_input" in info[("pretrained", "auc")].flag
    assert "empty_input" not in info[("random", "auc")].flag
    assert info[("random", "ndcg@1")].n_users == 3
    rows_out = pipeline.eval_rows([table], info)
    auc = next(r for r in rows_out if r[0] == "pretrained" and r[1] == "auc")
    assert auc[4:7] == (6.0, 3.0, 3.0) and "empty_input" in auc[9]


def test_frame_info_for_beyond_and_comparison_rows() -> None:
    from adrec_spark.evaluation.pipeline import frame_info

    beyond = pd.DataFrame({"coverage": [0.5, 0.1], "personalization": [float("nan"), 0.3],
                           "n_users": [1.0, 40.0], "n_recommendations": [10.0, 400.0]}, index=["cold", "warm"])
    info = frame_info(beyond, min_users=30)
    assert info[("cold", "coverage")].flag == "small_n"
    assert info[("cold", "personalization")].flag == "small_n,undefined"
    assert info[("warm", "coverage")] == U.MetricInfo(n_rows=400.0, n_users=40.0)
    comp = pd.DataFrame({"ndcg_diff@10": [0.01], "ndcg_diff_ci_low@10": [-0.02], "ndcg_diff_ci_high@10": [0.04],
                         "n_users": [12.0]}, index=["model v1 - random"])
    c = frame_info(comp, min_users=30)[("model v1 - random", "ndcg_diff@10")]
    assert (c.ci_low, c.ci_high, c.n_users, c.flag) == (-0.02, 0.04, 12.0, "small_n")
