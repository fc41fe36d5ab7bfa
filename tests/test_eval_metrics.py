"""Spark click, ranking and curve metrics against sklearn, numpy and hand-computed references."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest
from sklearn import metrics as skm

from adrec_spark.errors import InputDataError, MissingColumnsError
from adrec_spark.evaluation.metrics import (
    click_metrics,
    paired_difference,
    per_user_ndcg,
    ranking_metrics,
    ranking_metrics_with_per_user_ndcg,
    score_curves,
)

CLICK_SCHEMA = "label int, score double"
RANK_SCHEMA = "user_id string, ad_id string, label int, score double"


def _click_data(seed: int = 7, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Scores rounded to one decimal: many ties, and both ends 0.0 and 1.0 occur."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(np.round(0.35 * y + rng.uniform(-0.05, 0.7, n), 1), 0.0, 1.0)
    return y, s


def _click_df(spark, y, s):
    return spark.createDataFrame([(int(a), float(b)) for a, b in zip(y, s, strict=True)], CLICK_SCHEMA)


def spark_pr_auc_reference(y: np.ndarray, s: np.ndarray) -> float:
    """Spark's documented areaUnderPR: trapezoids over (recall, precision) at each distinct threshold, from
    (0, precision at the highest threshold)."""
    recall, precision = [], []
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
        recall.append(tp / y.sum())
        precision.append(tp / (tp + fp))
    recall, precision = [0.0, *recall], [precision[0], *precision]
    return sum((recall[i + 1] - recall[i]) * (precision[i + 1] + precision[i]) / 2 for i in range(len(recall) - 1))


def ece_reference(y: np.ndarray, s: np.ndarray, bins: int) -> float:
    total = 0.0
    for b in range(bins):
        in_bin = np.array([min(math.floor(v * bins), bins - 1) == b for v in s])
        if in_bin.any():
            total += abs(s[in_bin].mean() - y[in_bin].mean()) * in_bin.sum() / len(y)
    return total


# ------------------------------------------------------------------------------------------ click metrics


def test_click_metrics_match_sklearn_with_ties(spark) -> None:
    y, s = _click_data()
    assert len(set(s.tolist())) <= 11  # heavily tied
    got = click_metrics(_click_df(spark, y, s), threshold=0.5, bins=10)
    pred = (s >= 0.5).astype(int)
    clipped = np.clip(s, 1e-7, 1 - 1e-7)
    assert got["n"] == len(y)
    assert got["positive_rate"] == pytest.approx(y.mean())
    assert got["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert got["pr_auc"] == pytest.approx(spark_pr_auc_reference(y, s), abs=1e-12)
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(y, s), abs=0.05)  # different definition
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, clipped), rel=1e-9)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y, s))
    assert got["ece"] == pytest.approx(ece_reference(y, s, 10), abs=1e-12)
    assert all(type(v) is float for v in got.values())


def test_click_metrics_by_hand(spark) -> None:
    df = spark.createDataFrame([(1, 0.9), (0, 0.9), (1, 0.5), (0, 0.3), (1, 0.3), (0, 0.1)], CLICK_SCHEMA)
    got = click_metrics(df, threshold=0.95, bins=2)
    # pairs (pos, neg): 0.9>0.3, 0.9>0.1, 0.9=0.9 (1/2), 0.5>0.3, 0.5>0.1, 0.3=0.3 (1/2), 0.3>0.1 -> 6/9
    assert got["auc"] == pytest.approx(6 / 9)
    # PR points (0, .5), (1/3, .5), (2/3, 2/3), (1, .6), (1, .5)
    assert got["pr_auc"] == pytest.approx(1 / 6 + (0.5 + 2 / 3) / 6 + (2 / 3 + 0.6) / 6)
    assert math.isnan(got["precision"])  # nothing scores >= 0.95
    assert got["recall"] == 0.0
    assert got["accuracy"] == pytest.approx(0.5)
    # bin 0 = {.3, .3, .1}: |0.7/3 - 1/3| * 3/6 ; bin 1 = {.9, .9, .5}: |2.3/3 - 2/3| * 3/6
    assert got["ece"] == pytest.approx(abs(0.7 / 3 - 1 / 3) / 2 + abs(2.3 / 3 - 2 / 3) / 2)


def test_click_metrics_without_probabilities(spark) -> None:
    counts = [3.0, 10.0, 7.0, 7.0, 0.0, 25.0]
    labels = [0, 1, 1, 0, 0, 1]
    got = click_metrics(spark.createDataFrame(list(zip(labels, counts, strict=True)), CLICK_SCHEMA),
                        probabilities=False)
    assert got["auc"] == pytest.approx(skm.roc_auc_score(labels, counts))
    for key in ("log_loss", "accuracy", "precision", "recall", "ece", "brier"):
        assert math.isnan(got[key]), key
    assert got["positive_rate"] == pytest.approx(0.5)


def test_click_metrics_single_class_is_nan_with_warning(spark, caplog) -> None:
    df = spark.createDataFrame([(1, 0.2), (1, 0.8), (1, 0.6)], CLICK_SCHEMA)
    with caplog.at_level(logging.WARNING, logger="adrec_spark.evaluation.metrics"):
        got = click_metrics(df)
    assert math.isnan(got["auc"]) and math.isnan(got["pr_auc"])
    assert "undefined" in caplog.text
    assert got["recall"] == pytest.approx(2 / 3)
    assert got["log_loss"] == pytest.approx(-np.mean(np.log([0.2, 0.8, 0.6])))


@pytest.mark.parametrize(("rows", "message"), [
    ([], "no rows"),
    ([(1, 0.3), (0, None), (None, 0.5), (1, float("nan"))], "3 null/NaN value(s) in 4 row(s)"),
    ([(2, 0.3), (0, 0.5)], "other than 0 or 1"),
    ([(1, 1.5), (0, 0.5)], "outside [0, 1]"),
])
def test_click_metrics_rejects_bad_input(spark, rows, message) -> None:
    with pytest.raises(InputDataError, match=re.escape(message)):
        click_metrics(spark.createDataFrame(rows, CLICK_SCHEMA))


def test_metrics_name_missing_columns(spark) -> None:
    df = spark.createDataFrame([(1, 0.3)], "label int, prob double")
    with pytest.raises(MissingColumnsError, match="score"):
        click_metrics(df)
    with pytest.raises(MissingColumnsError, match="ad_id"):
        ranking_metrics(df.withColumn("user_id", df.label))
    with pytest.raises(MissingColumnsError, match="score"):
        score_curves(df)


# ---------------------------------------------------------------------------------------- ranking metrics


def _ranked_labels(rows) -> dict[str, list[int]]:
    """Each user's labels in ranking order: score descending, ties by item id ascending."""
    by_user: dict[str, list] = {}
    for user, item, label, score in rows:
        by_user.setdefault(user, []).append((item, label, score))
    return {u: [lab for _, lab, _ in sorted(c, key=lambda c: (-c[2], c[0]))] for u, c in by_user.items()}


def _reference_ranking(rows, ks) -> dict[str, float]:
    """Per-user computation written from the definitions (Spark's RankingMetrics, binary relevance)."""
    by_user = _ranked_labels(rows)
    per_user: dict[str, list[float]] = {}
    skipped = 0
    for ranked in by_user.values():
        n_rel = sum(ranked)
        if n_rel == 0:
            skipped += 1
            continue
        first = ranked.index(1) + 1
        per_user.setdefault("mrr", []).append(1 / first)
        for k in ks:
            top = ranked[:k]
            hits = sum(top)
            per_user.setdefault(f"precision@{k}", []).append(hits / k)
            per_user.setdefault(f"recall@{k}", []).append(hits / n_rel)
            per_user.setdefault(f"hit_rate@{k}", []).append(float(hits > 0))
            ap = sum(sum(top[: i + 1]) / (i + 1) for i in range(len(top)) if top[i])
            per_user.setdefault(f"map@{k}", []).append(ap / min(n_rel, k))
            dcg = sum(1 / math.log2(i + 2) for i in range(len(top)) if top[i])
            idcg = sum(1 / math.log2(i + 2) for i in range(min(n_rel, k)))
            per_user.setdefault(f"ndcg@{k}", []).append(dcg / idcg)
    out = {key: float(np.mean(vals)) for key, vals in per_user.items()}
    return out | {"n_users": float(len(by_user) - skipped), "n_users_skipped": float(skipped)}


def _random_rankings(seed: int = 11) -> list[tuple]:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(40):
        n = int(rng.integers(1, 16))
        items = rng.choice(60, size=n, replace=False)
        labels = (rng.uniform(size=n) < 0.3).astype(int)
        scores = np.round(rng.uniform(size=n), 1)  # ties
        rows += [(f"u{u:02d}", f"ad{i:02d}", int(lab), float(sc)) for i, lab, sc in zip(items, labels, scores,
                                                                                       strict=True)]
    rows += [("single", "ad01", 1, 0.4)]  # a single candidate
    rows += [("allpos", f"ad{i:02d}", 1, 0.1 * i) for i in range(7)]  # every candidate relevant
    rows += [("nopos", "ad01", 0, 0.9), ("nopos", "ad02", 0, 0.1)]  # skipped
    return rows


def test_ranking_metrics_match_reference(spark) -> None:
    rows = _random_rankings()
    got = ranking_metrics(spark.createDataFrame(rows, RANK_SCHEMA), ks=(3, 10))
    want = _reference_ranking(rows, (3, 10))
    assert want["n_users_skipped"] >= 1
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert all(type(v) is float for v in got.values())
    # sklearn's NDCG agrees for binary relevance but averages over tied scores: give it each user's ranking as
    # tie-free scores. A single candidate (sklearn refuses it) has NDCG 1 by definition.
    ndcg = [skm.ndcg_score([labels], [list(range(len(labels), 0, -1))], k=10) if len(labels) > 1 else 1.0
            for labels in _ranked_labels(rows).values() if any(labels)]
    assert got["ndcg@10"] == pytest.approx(np.mean(ndcg), abs=1e-12)


def test_per_user_ndcg_matches_the_reference_and_averages_to_ranking_metrics(spark) -> None:
    rows = _random_rankings()
    df = spark.createDataFrame(rows, RANK_SCHEMA)
    got = {r["user_id"]: r["ndcg"] for r in per_user_ndcg(df, k=3).collect()}
    want = {}
    for user, ranked in _ranked_labels(rows).items():
        if any(ranked):
            dcg = sum(1 / math.log2(i + 2) for i in range(min(3, len(ranked))) if ranked[i])
            want[user] = dcg / sum(1 / math.log2(i + 2) for i in range(min(sum(ranked), 3)))
    assert "nopos" not in got and set(got) == set(want)
    for user, value in want.items():
        assert got[user] == pytest.approx(value, abs=1e-12), user
    assert np.mean(list(got.values())) == pytest.approx(ranking_metrics(df, ks=(3,))["ndcg@3"], abs=1e-12)
    with pytest.raises(ValueError, match="positive"):
        per_user_ndcg(df, k=0)
    # From one ranking: the same table as ranking_metrics and the per-user NDCG at the largest K.
    metrics, frame = ranking_metrics_with_per_user_ndcg(df, ks=(1, 3))
    assert metrics == ranking_metrics(df, ks=(1, 3))
    shared = {r["user_id"]: r["ndcg"] for r in frame.collect()}
    assert set(shared) == set(want) and all(shared[u] == pytest.approx(v, abs=1e-12) for u, v in want.items())
    frame.unpersist()


def test_paired_difference_by_hand(spark) -> None:
    schema = "user_id string, ndcg double"
    a = spark.createDataFrame([("u1", 1.0), ("u2", 0.5), ("u3", 0.2)], schema)
    b = spark.createDataFrame([("u1", 0.5), ("u2", 0.5), ("u3", 0.4), ("u4", 0.9)], schema)  # u4 not in a
    got = paired_difference(a, b)
    diffs = np.array([0.5, 0.0, -0.2])
    half = 1.96 * diffs.std(ddof=1) / math.sqrt(3)
    assert got["diff"] == pytest.approx(0.1)
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(0.1 - half), pytest.approx(0.1 + half))
    assert (got["n_users"], got["users_better"], got["users_worse"]) == (3.0, 1.0, 1.0)
    one = paired_difference(a.where("user_id = 'u1'"), b)
    assert one["diff"] == pytest.approx(0.5) and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    none = paired_difference(a.where("user_id = 'zz'"), b)
    assert none["n_users"] == 0.0 and math.isnan(none["diff"])


def test_ranking_ties_break_by_item_id(spark) -> None:
    rows = [("u1", "b", 1, 0.5), ("u1", "a", 0, 0.5), ("u1", "c", 0, 0.2),
            ("u2", "a", 1, 0.5), ("u2", "b", 0, 0.5)]
    got = ranking_metrics(spark.createDataFrame(rows, RANK_SCHEMA), ks=(1,))
    # u1 ranks a, b, c: first hit at 2; u2 ranks a, b: first hit at 1
    assert got["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    for key in ("hit_rate@1", "precision@1", "recall@1", "ndcg@1", "map@1"):
        assert got[key] == pytest.approx(0.5), key


def test_ranking_without_any_positive_is_nan(spark, caplog) -> None:
    rows = [("u1", "a", 0, 0.5), ("u2", "a", 0, 0.1)]
    with caplog.at_level(logging.WARNING, logger="adrec_spark.evaluation.metrics"):
        got = ranking_metrics(spark.createDataFrame(rows, RANK_SCHEMA), ks=(5,))
    assert (got["n_users"], got["n_users_skipped"]) == (0.0, 2.0)
    assert math.isnan(got["ndcg@5"]) and math.isnan(got["mrr"])
    assert "no user has a relevant item" in caplog.text


@pytest.mark.parametrize(("rows", "message"), [
    ([], "no rows"),
    ([("u1", "a", 1, 0.5), ("u1", "a", 0, 0.2)], "1 duplicate"),
    ([("u1", "a", 1, None), ("u1", "b", None, 0.2), ("u1", "c", 0, 0.1)], "2 null/NaN value"),
    ([("u1", None, 1, 0.5), (None, "b", 0, 0.2)], "2 of 2 row"),
])
def test_ranking_rejects_bad_input(spark, rows, message) -> None:
    with pytest.raises(InputDataError, match=re.escape(message)):
        ranking_metrics(spark.createDataFrame(rows, RANK_SCHEMA))


def test_ranking_rejects_bad_ks(spark) -> None:
    df = spark.createDataFrame([("u1", "a", 1, 0.5)], RANK_SCHEMA)
    with pytest.raises(ValueError, match="ks"):
        ranking_metrics(df, ks=(0, 5))
    with pytest.raises(ValueError, match="ks"):
        ranking_metrics(df, ks=())


# ------------------------------------------------------------------------------------------- score curves


def test_score_curves_match_sklearn_curves(spark) -> None:
    y, s = _click_data(seed=3, n=300)
    curves = score_curves(_click_df(spark, y, s), n_bins=200, calibration_bins=4)
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    roc = curves["roc"]
    np.testing.assert_allclose(roc["fpr"], fpr, atol=1e-12)  # every distinct score is a quantile here
    np.testing.assert_allclose(roc["tpr"], tpr, atol=1e-12)
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(skm.roc_auc_score(y, s))
    precision, recall, _ = skm.precision_recall_curve(y, s, drop_intermediate=False)
    pr = curves["pr"]
    np.testing.assert_allclose(pr["recall"].iloc[1:], recall[::-1][1:], atol=1e-12)  # sklearn ends at (0, 1)
    np.testing.assert_allclose(pr["precision"].iloc[1:], precision[::-1][1:], atol=1e-12)
    assert pr["recall"].iloc[0] == 0.0

    cal = curves["calibration"]
    bins = np.minimum(np.floor(s * 4), 3).astype(int)
    assert cal["bin"].tolist() == sorted(set(bins.tolist()))
    for row in cal.itertuples():
        assert row.count == np.sum(bins == row.bin)
        assert row.mean_score == pytest.approx(s[bins == row.bin].mean())
        assert row.frac_positive == pytest.approx(y[bins == row.bin].mean())


def test_score_curves_few_thresholds_and_single_class(spark, caplog) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = rng.uniform(size=500)
    curves = score_curves(_click_df(spark, y, s), n_bins=8)
    roc = curves["roc"]
    assert len(roc) <= 8 + 2
    assert roc.iloc[0].tolist() == [0.0, 0.0] and roc.iloc[-1].tolist() == [1.0, 1.0]
    assert roc["fpr"].is_monotonic_increasing and roc["tpr"].is_monotonic_increasing
    assert abs(np.trapezoid(roc["tpr"], roc["fpr"]) - skm.roc_auc_score(y, s)) < 0.05

    with caplog.at_level(logging.WARNING, logger="adrec_spark.evaluation.metrics"):
        single = score_curves(spark.createDataFrame([(0, 0.2), (0, 0.4)], CLICK_SCHEMA), probabilities=False)
    assert single["roc"].empty and single["pr"].empty and single["calibration"].empty
    assert list(single["roc"].columns) == ["fpr", "tpr"]
    assert "single class" in caplog.text


def test_score_curves_rejects_nulls(spark) -> None:
    with pytest.raises(InputDataError, match="1 null/NaN"):
        score_curves(spark.createDataFrame([(1, 0.5), (0, None)], CLICK_SCHEMA))


# ------------------------------------------------------------------------------------------ baselines


def test_logistic_regression_rank_column_drops_only_the_user_terms(spark) -> None:
    """``logistic_regression__rank`` is the logit less a linear function of the user-only features: it does not
    move when they do, and logit - rank is exactly linear in them."""
    from adrec_spark import schema as S
    from adrec_spark.evaluation.baselines import RANK_SUFFIX, logistic_regression_scores, rank_column
    from tests.pairs import make_pairs

    user = (S.USER_RATE, S.USER_LOG_IMPRESSIONS)
    cols = [S.LABEL, *S.NUMERIC_FEATURES]
    train = spark.createDataFrame(make_pairs(300, 1)[cols])
    test_pd = make_pairs(60, 2)[cols]
    out = logistic_regression_scores(train, spark.createDataFrame(test_pd), user_features=user).toPandas()
    assert rank_column("logistic_regression", list(out.columns)) == "logistic_regression" + RANK_SUFFIX
    logit = np.log(out["logistic_regression"] / (1 - out["logistic_regression"]))
    gap = (logit - out["logistic_regression" + RANK_SUFFIX]).to_numpy()
    x = np.column_stack([np.ones(len(out)), out[list(user)].to_numpy()])
    coef, *_ = np.linalg.lstsq(x, gap, rcond=None)
    np.testing.assert_allclose(x @ coef, gap, atol=1e-6)
    assert np.abs(coef[1:]).max() > 1e-3  # the user features did carry weight
    moved = test_pd.assign(**{S.USER_RATE: test_pd[S.USER_RATE] + 5.0})
    out2 = logistic_regression_scores(train, spark.createDataFrame(moved), user_features=user).toPandas()
    np.testing.assert_allclose(out2["logistic_regression" + RANK_SUFFIX], out["logistic_regression" + RANK_SUFFIX],
                               atol=1e-9)
    assert not np.allclose(out2["logistic_regression"], out["logistic_regression"])
    plain = logistic_regression_scores(train, spark.createDataFrame(test_pd)).toPandas()
    assert "logistic_regression" + RANK_SUFFIX not in plain.columns
    assert rank_column("logistic_regression", list(plain.columns)) == "logistic_regression"


def test_method_metrics_releases_its_cached_frames_when_it_fails(spark, cfg, monkeypatch) -> None:
    """The per-user NDCG frames are cached for the paired comparison; an error on the way uncaches them."""
    from adrec_spark.evaluation import pipeline

    df = spark.createDataFrame([("u1", "a1", 1, 0.9, 0.1), ("u1", "a2", 0, 0.2, 0.8), ("u2", "a1", 1, 0.5, 0.4)],
                               "user_id string, ad_id string, label int, m1 double, m2 double")
    made = []
    real = pipeline.ranking_metrics_with_per_user_ndcg

    def recording(*args, **kwargs):
        metrics, frame = real(*args, **kwargs)
        made.append(frame)
        return metrics, frame

    def curves(df, *, score_col, **kwargs):
        if score_col == "m2":
            raise RuntimeError("injected: curves failed")
        return {}

    monkeypatch.setattr(pipeline, "ranking_metrics_with_per_user_ndcg", recording)
    monkeypatch.setattr(pipeline, "score_curves", curves)
    with pytest.raises(RuntimeError, match="injected"):
        pipeline.method_metrics(df, ["m1", "m2"], cfg)
    assert len(made) == 2 and not any(frame.is_cached for frame in made)


def test_logistic_regression_text_uses_the_text_features_and_ranks_without_the_counts(spark) -> None:
    """Clicks that follow the ad's similarity to the user's clicks: the text baseline sees it, the plain one
    cannot; moving a history-text count (user-only) leaves the rank column where it was."""
    import sklearn.metrics as skm

    from adrec_spark import schema as S
    from adrec_spark.evaluation.baselines import (
        RANK_SUFFIX,
        logistic_regression_scores,
        logistic_regression_text_scores,
    )
    from tests.pairs import make_pairs

    def frame(n, seed):
        rng = np.random.default_rng(seed)
        df = make_pairs(n, seed)[[*S.NUMERIC_FEATURES]].reset_index(drop=True)
        for c in S.TEXT_SIMILARITY_FEATURES:
            df[c] = rng.uniform(0, 1, len(df)) if "cos" in c else rng.integers(0, 5, len(df)).astype(float)
        df[S.LABEL] = (rng.uniform(0, 1, len(df)) < 0.1 + 0.8 * df["click_cos_max"]).astype(int)
        return df

    train, test = spark.createDataFrame(frame(400, 1)), frame(200, 2)
    user = (S.USER_RATE,)
    text = logistic_regression_text_scores(train, spark.createDataFrame(test), user_features=user).toPandas()
    plain = logistic_regression_scores(train, spark.createDataFrame(test)).toPandas()
    auc_text = skm.roc_auc_score(test[S.LABEL], text["logistic_regression_text"])
    assert auc_text > skm.roc_auc_score(test[S.LABEL], plain["logistic_regression"]) + 0.1
    moved = test.assign(click_texts=test["click_texts"] + 3.0)
    again = logistic_regression_text_scores(train, spark.createDataFrame(moved), user_features=user).toPandas()
    rank = "logistic_regression_text" + RANK_SUFFIX
    np.testing.assert_allclose(again[rank], text[rank], atol=1e-9)
