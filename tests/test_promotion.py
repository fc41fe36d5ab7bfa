"""The champion gate: a pure decision on AUC and NDCG@K, and the NDCG@K it reads (sklearn as the reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adrec_spark.model.trainer import mean_ndcg_at_k
from adrec_spark.registry.registry import GateMetrics, decide_promotion

MARGINS = dict(auc_margin=0.002, ndcg_margin=0.002, k=10, rows=500)


def test_no_champion_promotes() -> None:
    d = decide_promotion(GateMetrics(0.55, 0.30), None, None, **MARGINS)
    assert d.promote and d.reason == "no champion yet"
    assert d.tags()["champion_gate_auc"] == "" and d.tags()["promotion_decision"] == "promoted"


def test_a_tie_never_promotes() -> None:
    d = decide_promotion(GateMetrics(0.70, 0.40), GateMetrics(0.70, 0.40), 3, **MARGINS)
    assert not d.promote and "not better by the margin" in d.reason
    # better, but by less than the margin on both
    assert not decide_promotion(GateMetrics(0.7015, 0.4015), GateMetrics(0.70, 0.40), 3, **MARGINS).promote


def test_better_auc_with_worse_ndcg_keeps_the_champion() -> None:
    d = decide_promotion(GateMetrics(0.80, 0.39), GateMetrics(0.70, 0.40), 3, **MARGINS)
    assert not d.promote and "worse on NDCG@10" in d.reason
    d = decide_promotion(GateMetrics(0.69, 0.60), GateMetrics(0.70, 0.40), 3, **MARGINS)
    assert not d.promote and "worse on AUC" in d.reason


def test_better_on_one_by_the_margin_and_worse_on_neither_promotes() -> None:
    d = decide_promotion(GateMetrics(0.70, 0.41), GateMetrics(0.70, 0.40), 3, **MARGINS)
    assert d.promote and "better on NDCG@10" in d.reason
    d = decide_promotion(GateMetrics(0.71, 0.42), GateMetrics(0.70, 0.40), 3, **MARGINS)
    assert d.promote and "better on AUC and NDCG@10" in d.reason
    tags = d.tags()
    assert tags["challenger_gate_auc"] == "0.710000" and tags["champion_gate_ndcg_at_10"] == "0.400000"
    assert tags["champion_version_compared"] == "3" and tags["gate_rows"] == "500"
    assert tags["promotion_auc_margin"] == "0.002" and tags["promotion_k"] == "10"


@pytest.mark.parametrize("challenger, champion", [
    (GateMetrics(math.nan, 0.9), GateMetrics(0.5, 0.1)),
    (GateMetrics(0.9, math.nan), GateMetrics(0.5, 0.1)),
    (GateMetrics(0.9, 0.9), GateMetrics(math.nan, 0.1)),
])
def test_a_nan_never_promotes_and_says_why(challenger, champion) -> None:
    d = decide_promotion(challenger, champion, 4, **MARGINS)
    assert not d.promote and "NaN" in d.reason and "never promotes" in d.reason


def test_no_rows_neither_model_trained_on_never_promotes() -> None:
    d = decide_promotion(GateMetrics(math.nan, math.nan), GateMetrics(math.nan, math.nan), 4,
                         **(MARGINS | {"rows": 0}))
    assert not d.promote and "no test rows that neither model trained on" in d.reason


def test_mean_ndcg_at_k_matches_sklearn() -> None:
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(0)
    users, items, labels, scores = [], [], [], []
    want = []
    for u in range(40):
        n = int(rng.integers(2, 15))
        y = (rng.random(n) < 0.3).astype(float)
        s = rng.random(n)  # no ties: sklearn averages over tied scores, the job breaks ties by item id
        users += [f"u{u}"] * n
        items += [f"i{j}" for j in range(n)]
        labels += list(y)
        scores += list(s)
        if y.sum() > 0:  # users without a click are skipped
            want.append(ndcg_score([y], [s], k=10))
    got = mean_ndcg_at_k(np.array(users), np.array(items), np.array(labels), np.array(scores), k=10)
    assert got == pytest.approx(float(np.mean(want)), abs=1e-12)


def test_mean_ndcg_one_candidate_per_user_and_item_and_nan_without_clicks() -> None:
    # u1 saw ad a twice (clicked once; mean score 0.5) and ad b once (0.6, not clicked): b ranks first
    got = mean_ndcg_at_k(np.array(["u1", "u1", "u1"]), np.array(["a", "a", "b"]), np.array([1.0, 0.0, 0.0]),
                         np.array([0.9, 0.1, 0.6]), k=10)
    assert got == pytest.approx(1.0 / math.log2(3))
    assert math.isnan(mean_ndcg_at_k(np.array(["u"]), np.array(["a"]), np.array([0.0]), np.array([0.3]), k=5))
