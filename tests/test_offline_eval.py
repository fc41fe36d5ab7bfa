"""Scores brought back from a machine without Spark, evaluated here (adrec_spark.evaluation.offline): matched to
the test rows or refused, measured with the evaluation job's metrics (expected values by hand)."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from adrec_spark import schema as S
from adrec_spark.errors import InputDataError
from adrec_spark.evaluation import offline
from adrec_spark.evaluation.pipeline import TEST_COLUMNS
from tests.conftest import make_config

# user, ad, label, the model's probability, the item rate (a perfect ranker here)
ROWS = [("u1", "a1", 1, 0.9, 0.9), ("u1", "a2", 0, 0.8, 0.1), ("u1", "a3", 1, 0.1, 0.8),
        ("u2", "b1", 0, 0.7, 0.1), ("u2", "b2", 1, 0.6, 0.9), ("u2", "b3", 0, 0.2, 0.2)]


def _test_rows(spark):
    numeric = [c for c in S.NUMERIC_FEATURES]
    records = []
    for i, (u, a, y, _, rate) in enumerate(ROWS):
        features = {c: (rate if c == S.AD_RATE else 0.0) for c in numeric}
        records.append({S.EVENT_ID: f"e{i}", S.USER_ID: u, S.AD_ID: a, S.LABEL: y, S.HISTORY_TEXT: "clicked: x",
                        S.AD_TEXT: f"ad {a}", **features, "ad_impressions": 10 - i})
    schema = ", ".join([f"{S.EVENT_ID} string", f"{S.USER_ID} string", f"{S.AD_ID} string", f"{S.LABEL} int",
                        f"{S.HISTORY_TEXT} string", f"{S.AD_TEXT} string", *(f"{c} float" for c in numeric),
                        "ad_impressions long"])
    return spark.createDataFrame([tuple(r[c] for c in TEST_COLUMNS) for r in records], schema)


def _scores(spark, rows=ROWS, labels=None, ids=None):
    data = []
    for i, (u, a, y, p, _) in enumerate(rows):
        data.append(((ids or {}).get(i, f"e{i}"), u, a, (labels or {}).get(i, y), p, math.log(p / (1 - p)), -p))
    return spark.createDataFrame(data, "event_id string, user_id string, ad_id string, label int, score double, "
                                       "rank_score double, pretrained double")


def test_scores_are_measured_with_the_evaluation_jobs_metrics(spark, tmp_path) -> None:
    cfg = make_config(tmp_path, "evaluate.baselines=[item_rate, pretrained]", "evaluate.ks=[10]",
                      "evaluate.bootstrap_samples=10")
    test = _test_rows(spark)
    table, comparison, info = offline.evaluate_offline_scores(cfg, train=test, test=test, scores=_scores(spark))
    # Model AUC by hand: positives 0.9, 0.1, 0.6 against negatives 0.8, 0.7, 0.2 -> 3 + 0 + 1 of 9 pairs.
    assert table.loc["model", "auc"] == pytest.approx(4 / 9)
    assert table.loc["pretrained", "auc"] == pytest.approx(5 / 9)  # the carried column, -score, not recomputed
    # NDCG@10 by hand: u1 ranks 1, 0, 1 -> (1 + 1/log2 4) / (1 + 1/log2 3); u2 ranks 0, 1, 0 -> (1/log2 3) / 1.
    u1, u2 = 1.5 / (1 + 1 / math.log2(3)), 1 / math.log2(3)
    assert table.loc["model", "ndcg@10"] == pytest.approx((u1 + u2) / 2)
    assert table.loc["item_rate", "ndcg@10"] == pytest.approx(1.0)
    row = comparison.loc["model - item_rate"]
    assert row["ndcg_diff@10"] == pytest.approx((u1 - 1 + u2 - 1) / 2)
    sd = abs((u1 - 1) - (u2 - 1)) / math.sqrt(2)  # sample sd of two values
    assert row["ndcg_diff_ci_low@10"] == pytest.approx((u1 + u2 - 2) / 2 - 1.96 * sd / math.sqrt(2))
    assert row["users_worse"] == 2
    assert ("model", "auc") in info


@pytest.mark.parametrize(("change", "message"), [
    ({"rows": ROWS[:5]}, "1 test rows without a score"),
    ({"labels": {0: 0}}, "1 labels that differ"),
    ({"ids": {1: "e0"}}, "repeat 1 event id"),
    ({"ids": {5: "other"}}, "1 scores without a test row"),
])
def test_scores_that_do_not_match_the_test_rows_are_refused(spark, change, message) -> None:
    with pytest.raises(InputDataError, match=message):
        offline.check_offline_scores(_test_rows(spark), _scores(spark, **change))


def test_join_names_the_columns_as_the_evaluation_job_does(spark) -> None:
    joined = offline.join_offline_scores(_test_rows(spark), _scores(spark).drop("pretrained"))
    assert {"model", "model__rank"} <= set(joined.columns) and "pretrained" not in joined.columns
    got = {r[S.EVENT_ID]: (r["model"], r["model__rank"]) for r in joined.collect()}
    assert got["e0"] == pytest.approx((0.9, math.log(9)))
    with pytest.raises(Exception, match="rank_score"):
        offline.join_offline_scores(_test_rows(spark), _scores(spark).drop("rank_score"))


def test_evaluation_without_recommendations_is_named_after_its_models_test_split(spark, monkeypatch, tmp_path) -> None:
    """Regression: run_evaluation called _test_last_date without the model its split comes from (TypeError)."""
    from adrec_spark.evaluation import pipeline as EP

    seen = {}
    days = spark.createDataFrame([(dt.date(2024, 1, 3),), (dt.date(2024, 1, 5),)], f"{S.DS} date")

    def rows(spark_, cfg_, model):
        seen["model"] = model
        return days, days, 0

    monkeypatch.setattr(EP, "_test_rows", rows)
    assert EP._test_last_date(spark, make_config(tmp_path), "the model") == dt.date(2024, 1, 5)
    assert seen["model"] == "the model"


@pytest.mark.slow
def test_prepare_train_elsewhere_and_ingest_end_to_end(spark, tmp_path) -> None:
    """ETL -> the export the GPU bench carries -> the offline trainer on a tiny BERT (no Spark) -> the ingest:
    every test row scored once, every baseline on the same rows, the model's AUC as sklearn computes it."""
    import json
    import sys
    from pathlib import Path

    import pandas as pd
    from sklearn.metrics import roc_auc_score

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from adrec_spark.etl.pipeline import run_etl
    from adrec_spark.model import offline_train as OT
    from adrec_spark.samples.generator import GeneratorSpec, generate
    from bench import quality_gpu as QG
    from tests.tiny_bert import make_tiny_bert

    start = dt.date(2024, 1, 1)
    cfg = make_config(tmp_path, "evaluate.ks=[5, 10]", "evaluate.bootstrap_samples=20")
    generate(GeneratorSpec(n_users=20, n_ads=24, n_events=900, n_days=2, start=start, seed=9), tmp_path / "raw")
    run_etl(spark, cfg, start, start + dt.timedelta(days=1))
    exported = QG.export_for_offline(spark, cfg, str(tmp_path / "export"))
    carry = tmp_path / "carry"
    rows = {s: QG.recompress_split(tmp_path / "export" / s, carry / "data" / s) for s in ("train", "valid", "test")}
    assert rows == exported["rows"] and rows["test"] > 0
    OT.half_precision_copy(make_tiny_bert(tmp_path / "tiny"), carry / "model")
    (carry / "params.json").write_text(json.dumps({
        "max_length": 64, "epochs": 1, "batch_size": 8, "eval_batch_size": 64, "precision": "fp32",
        "base_model_dir": "model", "extra": {"dataset": "demo"}}))
    summary = OT.run(carry / "params.json", data=carry / "data", out=tmp_path / "out")
    assert summary["examples"] == rows["train"] and summary["dataset"] == "demo"

    manifest = {**exported, "recipe": []}
    ev = QG.evaluate_ingested(spark, cfg, manifest, str(tmp_path / "out" / OT.SCORES_FILE))
    assert {"model", *cfg.evaluate.baselines} <= set(ev["table"])
    assert set(ev["comparison"]) == {f"model - {b}" for b in cfg.evaluate.baselines}
    scores = pd.read_parquet(tmp_path / "out" / OT.SCORES_FILE)
    assert len(scores) == rows["test"]
    assert ev["table"]["model"]["auc"] == pytest.approx(roc_auc_score(scores["label"], scores["score"]), abs=1e-9)
    assert ev["table"]["pretrained"]["auc"] == pytest.approx(roc_auc_score(scores["label"], scores["pretrained"]),
                                                             abs=1e-9)
    assert ev["table"]["model"]["n"] == rows["test"]
    low, high = ev["intervals"]["model|auc"]
    assert low <= ev["table"]["model"]["auc"] <= high
