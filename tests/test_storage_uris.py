"""Every storage setting given as a ``file:///`` URI, through every job (tiny BERT): ETL, a training run that
fails, training, scoring, evaluation and forget-users. Then nothing was written to a folder named after a
scheme, and no file under staging or the MLflow artifacts holds the forgotten user's id or history text."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.etl.pipeline import run_etl
from adrec_spark.evaluation.pipeline import run_evaluation
from adrec_spark.io import erasure
from adrec_spark.samples.generator import GeneratorSpec, generate
from adrec_spark.scoring.pipeline import run_scoring
from adrec_spark.training import pipeline as training
from tests.conftest import ROOT, make_config
from tests.leaks import files_holding
from tests.test_jobs import TINY_TRAIN
from tests.tiny_bert import make_tiny_bert

START = dt.date(2024, 1, 1)
LAST = START + dt.timedelta(days=2)


def _victim(spark, cfg) -> tuple[str, set[str]]:
    """A user with training rows and a history text no one else has, and whose id the package's source (which
    the pyfunc logs as code) does not quote."""
    source = "\n".join(p.read_text() for p in (ROOT / "adrec_spark").rglob("*.py"))
    rows = (spark.read.format("delta").load(cfg.storage.table_path(S.TRAINING_EXAMPLES))
            .where(F.length(S.HISTORY_TEXT) > 0).select(S.USER_ID, S.HISTORY_TEXT).distinct().collect())
    owners: dict[str, set[str]] = {}
    for r in rows:
        owners.setdefault(r[S.HISTORY_TEXT], set()).add(r[S.USER_ID])
    for uid in sorted({r[S.USER_ID] for r in rows}):
        texts = {t for t, users in owners.items() if users == {uid}}
        if texts and f'"{uid}"' not in source and f"'{uid}'" not in source:
            return uid, texts
    raise AssertionError("no user with a history text of their own")


@pytest.mark.slow
def test_every_storage_setting_as_a_file_uri_through_every_job(spark, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a folder named 's3a:' or 'file:' would appear here
    tiny = make_tiny_bert(tmp_path / "tiny")
    generate(GeneratorSpec(n_users=30, n_ads=24, n_events=1200, n_days=3, start=START, seed=5), tmp_path / "raw")
    uris = {"storage.lakehouse": "lakehouse", "storage.raw_events": "raw/events", "storage.raw_ads": "raw/ads",
            "storage.staging": "staging", "mlflow.artifact_location": "mlartifacts",
            "train.checkpoint_dir": "checkpoints", "evaluate.report_dir": "reports"}
    cfg = make_config(tmp_path, f"model.base_model={tiny}", *TINY_TRAIN, "evaluate.baselines=[random, popularity]",
                      *(f"{k}={(tmp_path / v).as_uri()}" for k, v in uris.items()))
    assert all(getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]).startswith("file:///") for k in uris)

    run_etl(spark, cfg, START, LAST)
    with monkeypatch.context() as m:  # a run that fails after its export deletes the splits all the same
        m.setattr(training, "_run_distributed", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(RuntimeError, match="boom"):
            training.run_training(spark, cfg)
    assert not list((tmp_path / "staging").rglob("*.parquet"))

    trained = training.run_training(spark, cfg)
    assert trained.promoted and sum(trained.rows.values()) > 0
    assert (tmp_path / "checkpoints" / cfg.mlflow.model_name / "last.pt").is_file()
    assert not list((tmp_path / "staging").rglob("*.parquet"))  # the splits are gone after training
    scored = run_scoring(spark, cfg, LAST)
    assert scored.recommendations > 0
    assert list((tmp_path / "staging" / "models").glob(f"{cfg.mlflow.model_name}-v1-*/spec.json"))
    result = run_evaluation(spark, cfg)
    assert result.report_location == (tmp_path / "reports").as_uri() + f"/evaluation-{LAST.isoformat()}.html"
    assert result.report_path == tmp_path / "reports" / f"evaluation-{LAST.isoformat()}.html"
    assert result.report_path.is_file()
    assert list((tmp_path / "mlartifacts").rglob("MLmodel"))
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(":")]  # no 'file:' / 's3a:' folders

    uid, texts = _victim(spark, cfg)
    erasure.forget_users(spark, cfg, [uid])
    assert files_holding(tmp_path / "staging", {uid}, texts) == []
    assert files_holding(tmp_path / "mlartifacts", {uid}, texts) == []
