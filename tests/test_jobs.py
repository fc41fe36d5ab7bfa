"""Training, scoring and evaluation jobs end to end on generated logs: real Spark, Delta, MLflow registry.

Most tests use a tiny BERT built from a config (fast); ``test_real_model_through_every_job`` runs the packaged
all-MiniLM-L6-v2 through the same jobs.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.config import replace
from adrec_spark.errors import InputDataError, ModelResolutionError
from adrec_spark.etl.pipeline import run_etl
from adrec_spark.model.inference import PRECISIONS, Scorer, cached_cpu_precision
from adrec_spark.registry import registry
from adrec_spark.samples.generator import GeneratorSpec, generate
from adrec_spark.scoring.pipeline import pair_features, run_scoring
from adrec_spark.training import split as split_mod
from adrec_spark.training.pipeline import run_training
from tests.conftest import ROOT, make_config
from tests.tiny_bert import make_tiny_bert

START = dt.date(2024, 1, 1)
LAST = START + dt.timedelta(days=2)
NEVER_PROMOTE = ("train.promotion_auc_margin=1.0", "train.promotion_ndcg_margin=1.0")

TINY_TRAIN = ["model.max_length=64", "train.epochs=1", "train.batch_size=16", "train.eval_batch_size=64",
              "train.learning_rate=5e-4", "train.head_learning_rate=5e-3", "train.log_every_steps=10",
              "train.precision=fp32", "train.max_eval_rows=300", "score.retrieval_top_n=6", "score.prior_top_n=3",
              "score.top_k=4", "score.batch_size=32", "score.popular_pool=8"]


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jobs")
    tiny = make_tiny_bert(tmp / "tiny")
    cfg = make_config(tmp, f"model.base_model={tiny}", *TINY_TRAIN)
    generate(GeneratorSpec(n_users=50, n_ads=36, n_events=2500, n_days=3, start=START, seed=3), tmp / "raw")
    run_etl(spark, cfg, START, LAST)
    trained = run_training(spark, cfg)
    scored = run_scoring(spark, cfg, LAST)
    return {"cfg": cfg, "tmp": tmp, "tiny": tiny, "trained": trained, "scored": scored}


def _table(spark, cfg, name):
    return spark.read.format("delta").load(cfg.storage.table_path(name))


# --- training ----------------------------------------------------------------------------------------------

def test_training_logs_lineage_metrics_plots_and_registers(world) -> None:
    from mlflow.tracking import MlflowClient

    cfg, trained = world["cfg"], world["trained"]
    c = MlflowClient(cfg.mlflow.tracking_uri)
    run = c.get_run(trained.run_id)
    assert run.data.params["data.table_version"] == str(trained.table_version)
    assert int(run.data.params["data.rows_train"]) == trained.rows["train"] > 0
    assert run.data.params["train.learning_rate"] == "0.0005"
    for key in ("test_auc", "pretrained_test_auc", "best_valid_auc", "train_samples_per_sec"):
        assert key in run.data.metrics, key
    assert [m.step for m in c.get_metric_history(trained.run_id, "valid_auc")]
    artifacts = {a.path for a in c.list_artifacts(trained.run_id, "plots")}
    assert artifacts == {"plots/learning_curves.png", "plots/test_roc_pr_calibration.png"}
    mv = c.get_model_version_by_alias(cfg.mlflow.model_name, "champion")
    assert int(mv.version) == trained.model_version == 1 and trained.promoted
    assert c.get_model_version_by_alias(cfg.mlflow.model_name, "challenger").version == mv.version
    assert mv.tags["promotion_decision"] == "promoted"


def test_promotion_gate_keeps_the_champion_when_the_challenger_is_not_better(spark, world) -> None:
    from mlflow.tracking import MlflowClient

    cfg = replace(world["cfg"], "train.promotion_auc_margin=0.5", "train.promotion_ndcg_margin=0.5",
                  "train.max_steps=2")
    result = run_training(spark, cfg)
    c = MlflowClient(cfg.mlflow.tracking_uri)
    assert not result.promoted and result.model_version == 2
    assert int(c.get_model_version_by_alias(cfg.mlflow.model_name, "champion").version) == 1
    assert int(c.get_model_version_by_alias(cfg.mlflow.model_name, "challenger").version) == 2
    tags = c.get_model_version(cfg.mlflow.model_name, "2").tags
    assert tags["promotion_decision"] == "kept_champion"
    assert float(tags["champion_gate_auc"]) == pytest.approx(result.gate.champion.auc, abs=1e-6)
    assert float(tags["challenger_gate_ndcg_at_10"]) == pytest.approx(result.gate.challenger.ndcg, abs=1e-6)
    assert float(tags["challenger_test_auc"]) == pytest.approx(result.test_auc)
    assert tags["champion_version_compared"] == "1" and int(tags["gate_rows"]) > 0
    assert "test cut-off" in tags["compared_on"]
    # both versions record the split they were trained with
    v1 = c.get_model_version(cfg.mlflow.model_name, "1").tags
    assert v1["split.method"] == "fraction" and v1["split.test_from"]
    assert tags["split.test_from"] == v1["split.test_from"]  # the same table version, the same split


def test_evaluation_uses_the_split_the_model_was_trained_with(spark, world) -> None:
    """The evaluation job re-applies the model version's recorded cut-offs to its pinned table version: the
    same test rows the training run counted, all later than every train row."""
    from adrec_spark.evaluation.pipeline import _test_rows

    cfg, trained = world["cfg"], world["trained"]
    model = registry.resolve(cfg.mlflow, version=trained.model_version)
    train, test, version = _test_rows(spark, cfg, model)
    assert version == trained.table_version
    assert test.count() == trained.rows["test"] > 0 and train.count() == trained.rows["train"]
    assert train.agg(F.max(S.EVENT_TS)).first()[0] <= test.agg(F.min(S.EVENT_TS)).first()[0]


def test_registered_model_works_through_mlflow_spark_udf(spark, world) -> None:
    import mlflow.pyfunc

    cfg = world["cfg"]
    from adrec_spark.training.split import assign_split

    test = assign_split(_table(spark, cfg, S.TRAINING_EXAMPLES), world["trained"].cutoffs) \
        .where(F.col(S.SPLIT) == "test").limit(20)
    rows = test.select(*S.MODEL_INPUT_COLUMNS).toPandas()
    udf = mlflow.pyfunc.spark_udf(spark, f"models:/{cfg.mlflow.model_name}@champion", result_type="double",
                                  env_manager="local")
    got = test.select(udf(*[F.col(c) for c in S.MODEL_INPUT_COLUMNS]).alias("s")).toPandas()["s"].to_numpy()
    model = registry.resolve(cfg.mlflow, alias="champion")
    local = registry.download_model_dir(cfg.mlflow, model, world["tmp"] / "check-model")
    want = Scorer(local).score(rows[S.AD_TEXT], rows[S.HISTORY_TEXT], rows[list(S.NUMERIC_FEATURES)].to_numpy())
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_warm_start_from_champion_on_a_window(spark, world) -> None:
    from mlflow.tracking import MlflowClient

    cfg = replace(world["cfg"], "train.window_days=2", "train.max_steps=2", *NEVER_PROMOTE)
    result = run_training(spark, cfg, init_from="champion")
    params = MlflowClient(cfg.mlflow.tracking_uri).get_run(result.run_id).data.params
    assert params["init_from"].startswith(f"models:/{cfg.mlflow.model_name}/1")
    assert result.rows["train"] < world["trained"].rows["train"]  # only the last two days
    assert result.pretrained_test_auc is None  # a warm start has no "before fine-tuning" baseline
    assert result.cutoffs.window_start is not None and result.gate.rows > 0 and not result.promoted


def test_two_training_processes_through_torch_distributor(spark, world) -> None:
    """The local-mode path of the cluster set-up: 2 DDP processes (gloo) on the driver."""
    cfg = replace(world["cfg"], "train.num_processes=2", "train.max_steps=4", *NEVER_PROMOTE,
                  "train.zero_shot_baseline=false")
    result = run_training(spark, cfg)
    assert result.summary["world_size"] == 2
    assert result.summary["global_step"] == 4
    assert 0.0 <= result.test_auc <= 1.0


def test_training_errors_are_clear(spark, world, tmp_path) -> None:
    cfg = world["cfg"]
    with pytest.raises(InputDataError, match="training_examples' does not exist"):
        run_training(spark, make_config(tmp_path))
    with pytest.raises(ModelResolutionError, match="alias 'nope' not found"):
        run_training(spark, cfg, init_from="nope")
    with pytest.raises(ModelResolutionError, match="neither a local folder"):
        run_training(spark, replace(cfg, f"model.base_model={tmp_path / 'missing-model'}"))
    with pytest.raises(ModelResolutionError, match="cannot set alias"):
        registry.set_alias(cfg.mlflow, "not valid!", 1)


# --- scoring -------------------------------------------------------------------------------------------------

def test_scoring_writes_pinned_scores_and_recommendations(spark, world) -> None:
    cfg, scored = world["cfg"], world["scored"]
    scores = _table(spark, cfg, S.USER_AD_SCORES)
    recs = _table(spark, cfg, S.RECOMMENDATIONS)
    assert scores.count() == scored.pairs_scored > 0
    assert {tuple(r) for r in scores.select(S.MODEL_NAME, S.MODEL_VERSION).distinct().collect()} == \
        {(cfg.mlflow.model_name, 1)}
    assert scores.groupBy(S.USER_ID, S.AD_ID).count().where("count > 1").count() == 0
    # the cascade scores at most top_n + prior_n ads per user (popular_pool for users without history)
    cold = scored.users_by_strategy.get("popular", 0) + scored.users_by_strategy.get("shown", 0)
    bound = (scored.users - cold) * (cfg.score.retrieval_top_n + cfg.score.prior_top_n) + \
        cold * cfg.score.popular_pool
    assert scored.pairs_scored <= bound < scored.all_pairs
    # users without history share model inputs (same ad, empty history, same features): scored once each
    assert scored.inputs_scored is not None and 0 < scored.inputs_scored < scored.pairs_scored
    assert scored.pairs_saved == scored.pairs_scored - scored.inputs_scored
    r = recs.toPandas()
    assert (r.groupby(S.USER_ID)[S.RANK].max() <= cfg.score.top_k).all()
    assert not r.duplicated([S.USER_ID, S.AD_ID]).any()
    assert r[S.REASON].str.len().gt(0).all()
    profiles = _table(spark, cfg, S.USER_PROFILES).where(F.col(S.DS) == LAST).toPandas().set_index(S.USER_ID)
    for user, group in r.groupby(S.USER_ID):
        assert not set(group[S.AD_ID]) & set(profiles.loc[user, "clicked_ad_ids"]), user
    popular_users = profiles.index[profiles[S.HISTORY_TEXT].eq("") & profiles["recent_queries"].map(len).eq(0)]
    assert set(r[r[S.USER_ID].isin(popular_users)][S.STRATEGY]) <= {"popular", "shown"}
    # users without history do not all get the same list
    cold_lists = r[r[S.USER_ID].isin(popular_users)].groupby(S.USER_ID)[S.AD_ID].apply(tuple)
    assert len(cold_lists) < 2 or cold_lists.nunique() > 1
    assert (r.groupby(S.USER_ID)[S.SCORE].apply(lambda s: s.notna().all())).all()


def test_spark_scores_equal_in_process_scores(spark, world) -> None:
    cfg = world["cfg"]
    scores = _table(spark, cfg, S.USER_AD_SCORES).where(F.col(S.SCORE_DATE) == LAST)
    users = _table(spark, cfg, S.USER_PROFILES).where(F.col(S.DS) == LAST)
    ads = _table(spark, cfg, S.ADS).where(F.col(S.DS) == LAST)
    pairs = pair_features(scores.select(S.USER_ID, S.AD_ID, S.SCORE), users, ads, rate_prior=cfg.etl.rate_prior,
                          rate_prior_strength=cfg.etl.rate_prior_strength).toPandas()
    model = registry.resolve(cfg.mlflow, alias="champion")
    local = registry.download_model_dir(cfg.mlflow, model, world["tmp"] / "inproc-model")
    precision = _run_settings(spark, cfg, LAST)["precision"]  # what every task of the job ran
    want = Scorer(local, precision=precision).score(pairs[S.AD_TEXT], pairs[S.HISTORY_TEXT],
                                                    pairs[list(S.NUMERIC_FEATURES)].to_numpy())
    # bf16 sums depend a little on the micro-batch shapes (dynamic padding), fp32 and int8 hardly at all
    np.testing.assert_allclose(pairs[S.SCORE].to_numpy(), want, atol=3e-3 if precision == "bf16" else 1e-4)


def _run_settings(spark, cfg, day) -> dict:
    runs = _table(spark, cfg, S.SCORING_RUNS).where(F.col(S.SCORE_DATE) == day).collect()
    return json.loads(runs[0]["score_settings"])


def test_auto_precision_is_decided_once_per_job_and_recorded(spark, world) -> None:
    """``auto`` is measured once per job (cached per host) and every task of the job runs that precision: a
    rerun repeats it, and ``scoring_runs`` records it (a later night in another precision scores in full)."""
    from adrec_spark.model_udf import prepare_model

    cfg = world["cfg"]
    assert cfg.score.precision == "auto"
    prepared = prepare_model(spark, cfg)
    assert prepared.settings.precision in PRECISIONS
    assert prepared.settings.precision == cached_cpu_precision(prepared.local_dir, threads=cfg.score.torch_threads)
    assert _run_settings(spark, cfg, LAST)["precision"] == prepared.settings.precision


def test_rerun_of_a_date_leaves_identical_tables(spark, world) -> None:
    cfg = world["cfg"]

    def snapshot():
        s = _table(spark, cfg, S.USER_AD_SCORES).orderBy(S.USER_ID, S.AD_ID).collect()
        r = _table(spark, cfg, S.RECOMMENDATIONS).orderBy(S.USER_ID, S.RANK).collect()
        return [tuple(x) for x in s], [tuple(x) for x in r]

    before = snapshot()
    run_scoring(spark, cfg, LAST)
    assert snapshot() == before


def test_all_candidates_mode_scores_every_unclicked_eligible_pair(spark, world) -> None:
    cfg = replace(world["cfg"], "score.candidates=all", f"storage.lakehouse={world['tmp'] / 'lakehouse-all'}")
    import shutil

    shutil.copytree(world["cfg"].storage.lakehouse, cfg.storage.lakehouse)
    result = run_scoring(spark, cfg, LAST)
    users = _table(spark, cfg, S.USER_PROFILES).where(F.col(S.DS) == LAST).toPandas()
    ads = _table(spark, cfg, S.ADS).where(F.col(S.DS) == LAST).toPandas()
    serve = LAST + dt.timedelta(days=1)
    live = ads[(ads[S.START_DATE].isna() | (ads[S.START_DATE] <= serve))
               & (ads[S.END_DATE].isna() | (ads[S.END_DATE] >= serve))][S.AD_ID]
    assert result.eligible_ads == len(live) < len(ads)  # some ads are off their flight
    expected = sum(len(set(live) - set(clicked)) for clicked in users["clicked_ad_ids"])
    assert result.pairs_scored == expected


def _evaluate_cli(spark, cfg, monkeypatch, capsys) -> str:
    from adrec_spark import cli

    monkeypatch.setattr(cli, "_session", lambda cfg, job: spark)
    monkeypatch.setattr(cli, "load", lambda args: cfg)
    assert cli.main(["evaluate"]) == 0
    return capsys.readouterr().out


def test_evaluate_prints_samples_names_the_report_after_the_data_and_flags_metrics(spark, world, monkeypatch,
                                                                                 capsys) -> None:
    cfg = replace(world["cfg"], "evaluate.baselines=[random, item_rate]", "evaluate.bootstrap_samples=50",
                  f"evaluate.report_dir={world['tmp'] / 'reports-cli'}")
    out = _evaluate_cli(spark, cfg, monkeypatch, capsys)
    assert f"A few users' recommendations of {LAST}:" in out and "history:" in out  # the demo's samples
    assert f"evaluation-{LAST}.html" in out
    assert "small_n" in out  # a few dozen test users: too few to tell methods apart, and it says so
    m = _table(spark, cfg, S.EVAL_METRICS).where(F.col("eval_date") == LAST)
    assert {"n_rows", "n_positives", "n_users", "ci_low", "ci_high", "flag"} <= set(m.columns)
    auc = m.where((F.col("method") == "model v1") & (F.col("metric") == "auc")).first()
    assert auc["n_rows"] > auc["n_positives"] > 0 and auc["ci_low"] <= auc["value"] <= auc["ci_high"]
    methods = {r[0] for r in m.select("method").distinct().collect()}
    recs = _table(spark, cfg, S.RECOMMENDATIONS).where(F.col(S.SCORE_DATE) == LAST)
    if recs.where(F.col(S.STRATEGY).isin("shown", "popular")).limit(1).count():
        assert "model v1 [cold users]" in methods  # cold users' coverage and personalization on their own


def test_evaluate_without_recommendations_is_named_after_the_test_data(spark, world, monkeypatch, capsys) -> None:
    import shutil

    lake = world["tmp"] / "lakehouse-norecs"
    shutil.copytree(world["cfg"].storage.lakehouse, lake,
                    ignore=lambda d, names: [n for n in names if n in (S.RECOMMENDATIONS, S.EVAL_METRICS)])
    cfg = replace(world["cfg"], f"storage.lakehouse={lake}", "evaluate.baselines=[random, logistic_regression_text]",
                  "evaluate.bootstrap_samples=20", f"evaluate.report_dir={world['tmp'] / 'reports-norecs'}")
    examples = _table(spark, cfg, S.TRAINING_EXAMPLES)
    cutoffs = split_mod.compute_cutoffs(examples, cfg.train.split, window_days=cfg.train.window_days)
    test = split_mod.assign_split(examples, cutoffs).where(F.col(S.SPLIT) == S.TEST)
    last_test_day = test.agg(F.max(S.DS)).first()[0]
    out = _evaluate_cli(spark, cfg, monkeypatch, capsys)
    assert f"evaluation-{last_test_day}.html" in out  # not today's date
    assert "No recommendations to show" in out
    # logistic regression + text similarity: a probability with its own metrics and a paired comparison
    m = _table(spark, cfg, S.EVAL_METRICS).where(F.col("method").startswith("logistic_regression_text")
                                                 | F.col("method").endswith("- logistic_regression_text"))
    got = {(r["method"], r["metric"]) for r in m.collect()}
    assert {("logistic_regression_text", "auc"), ("logistic_regression_text", "log_loss"),
            ("model v1 - logistic_regression_text", "ndcg_diff")} <= got


@pytest.mark.slow
def test_text_similarity_features_through_training_the_gate_scoring_and_evaluation(spark, world) -> None:
    """``model.text_similarity_features``: the model reads them in training, in the gate next to a champion
    without them, in scoring (a spec of 15 features: fewer columns would not reshape) and in evaluation."""
    import shutil

    from adrec_spark.evaluation.pipeline import run_evaluation
    from adrec_spark.model.relevance import ModelSpec

    lake = world["tmp"] / "lakehouse-text"
    shutil.copytree(world["cfg"].storage.lakehouse, lake, ignore=lambda d, names: [
        n for n in names if n in (S.USER_AD_SCORES, S.RECOMMENDATIONS, S.EVAL_METRICS)])
    cfg = replace(world["cfg"], f"storage.lakehouse={lake}", f"storage.staging={lake / '_staging'}",
                  "model.text_similarity_features=true", "train.max_steps=4", *NEVER_PROMOTE,
                  "evaluate.baselines=[logistic_regression_text]", "evaluate.bootstrap_samples=20",
                  f"evaluate.report_dir={world['tmp'] / 'reports-text'}")
    trained = run_training(spark, cfg)
    assert not trained.promoted and trained.gate.champion is not None  # v1 read its 6 of the gate's columns
    model = registry.resolve(cfg.mlflow, version=trained.model_version)
    spec = registry.download_model_dir(cfg.mlflow, model, world["tmp"] / "text-model") / "spec.json"
    assert ModelSpec.from_json(spec.read_text()).numeric_features == [*S.NUMERIC_FEATURES,
                                                                       *S.TEXT_SIMILARITY_FEATURES]
    pinned = replace(cfg, f"score.model_version={trained.model_version}")
    scored = run_scoring(spark, pinned, LAST)
    assert scored.model_version == trained.model_version and scored.pairs_scored > 0 and scored.recommendations > 0
    result = run_evaluation(spark, pinned)
    assert {f"model v{trained.model_version}", "logistic_regression_text"} <= set(result.table.index)


def test_unknown_alias_fails_before_any_work(spark, world) -> None:
    cfg = replace(world["cfg"], "score.model_alias=no-such-alias")
    before = _table(spark, cfg, S.USER_AD_SCORES).count()
    with pytest.raises(ModelResolutionError, match=r"alias .no-such-alias. not found.*it has aliases"):
        run_scoring(spark, cfg, LAST)
    assert _table(spark, cfg, S.USER_AD_SCORES).count() == before


def test_unknown_alias_cancels_the_users_read_it_started(spark, world, monkeypatch, tmp_path) -> None:
    """The users' count runs in a thread while the registry resolves the alias; an unknown alias cancels it
    instead of leaving the process to wait for it (here a read slowed to 60 s)."""
    import time

    from adrec_spark.scoring import pipeline

    real = pipeline.with_strategy
    started = tmp_path / "read-started"

    def slow_rows(batches, marker=str(started)):
        import pathlib
        import time

        pathlib.Path(marker).touch()  # the Python worker tells the test that the slow read runs
        time.sleep(60)
        yield from batches

    def slow_with_strategy(df):
        out = real(df)
        return out.mapInPandas(slow_rows, out.schema)

    def resolve_after_the_read_started(*args, **kwargs):
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline, "the users' read never started"
            time.sleep(0.05)
        raise ModelResolutionError("alias 'no-such-alias' not found")

    monkeypatch.setattr(pipeline, "with_strategy", slow_with_strategy)
    monkeypatch.setattr(pipeline.registry, "resolve", resolve_after_the_read_started)
    with pytest.raises(ModelResolutionError):
        run_scoring(spark, world["cfg"], LAST)
    deadline = time.monotonic() + 20  # well before the 60-s read would end by itself
    while spark.sparkContext.statusTracker().getActiveJobsIds():
        assert time.monotonic() < deadline, "the users' read still runs after the error"
        time.sleep(0.1)


def test_empty_user_set_is_a_clear_error(spark, world) -> None:
    with pytest.raises(InputDataError, match="no user profiles for 2023-06-01"):
        run_scoring(spark, world["cfg"], dt.date(2023, 6, 1))


def test_no_eligible_ads_is_a_clear_error_and_writes_nothing(spark, world, monkeypatch) -> None:
    from adrec_spark.io import tables
    from adrec_spark.scoring import pipeline

    cfg = world["cfg"]
    written = (S.USER_AD_SCORES, S.RECOMMENDATIONS)
    before = {t: tables.table_version(spark, cfg.storage, t) for t in written}
    assert all(v is not None for v in before.values())  # the fixture's run wrote both
    monkeypatch.setattr(pipeline, "eligible_ads", lambda ads, day: ads.where(F.lit(False)))
    serve = LAST + dt.timedelta(days=1)
    with pytest.raises(InputDataError, match=f"no ads eligible on {serve} in the {LAST} catalog"):
        run_scoring(spark, cfg, LAST)
    assert {t: tables.table_version(spark, cfg.storage, t) for t in written} == before


def test_gpu_task_resource_falls_back_to_cpu_with_a_warning(world) -> None:
    """A Spark task given a GPU scores on it; without CUDA here it warns and scores on CPU."""
    import torch

    model = world["tmp"] / "gpu-model"
    if not model.exists():
        registry.download_model_dir(world["cfg"].mlflow, registry.resolve(world["cfg"].mlflow, alias="champion"),
                                    model)
    jars = ",".join(str(p) for p in sorted((ROOT / ".jars").glob("*.jar")))
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "gpu_task_resource.py"), str(model),
                          jars], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["gpus"] == ["0"]
    if torch.cuda.is_available():
        assert seen["device"] == "cuda:0" and not seen["warnings"]
    else:
        assert seen["device"] == "cpu"
        assert any("CUDA is not available" in w for w in seen["warnings"])
    assert len(seen["scores"]) == 3 and all(0 < s < 1 for s in seen["scores"])


# --- the real model through every job -------------------------------------------------------------------------

@pytest.mark.slow
def test_real_model_through_every_job(spark, tmp_path) -> None:
    from adrec_spark.evaluation.pipeline import run_evaluation

    cfg = make_config(tmp_path, "model.max_length=96", "train.max_steps=3", "train.batch_size=8",
                      "train.max_eval_rows=48", "train.eval_batch_size=48", "train.log_every_steps=1",
                      "score.retrieval_top_n=4", "score.prior_top_n=2", "score.top_k=3",
                      "evaluate.baselines=[random, popularity, item_rate, logistic_regression, als, pretrained]")
    generate(GeneratorSpec(n_users=20, n_ads=24, n_events=900, n_days=2, start=START, seed=9), tmp_path / "raw")
    run_etl(spark, cfg, START, START + dt.timedelta(days=1))
    trained = run_training(spark, cfg)
    assert trained.promoted and trained.pretrained_test_auc is not None
    scored = run_scoring(spark, cfg, START + dt.timedelta(days=1))
    assert scored.recommendations > 0
    result = run_evaluation(spark, replace(cfg, "evaluate.ks=[3]"))
    assert result.report_path.is_file()
    assert {"model v1", "random", "popularity", "item_rate", "logistic_regression", "als", "pretrained",
            "model v1 [by probability]", "logistic_regression [by probability]"} <= set(result.table.index)
    metrics = _table(spark, cfg, S.EVAL_METRICS)
    assert metrics.where((F.col("method") == "model v1") & (F.col("metric") == "auc")).count() == 1
    # the model against each baseline, paired over the same users: the difference of the two NDCG@3 means
    comp = result.comparison
    assert set(comp.index) == {f"model v1 - {m}" for m in ("random", "popularity", "item_rate",
                                                           "logistic_regression", "als", "pretrained")}
    for m in ("item_rate", "als"):
        want = result.table.loc["model v1", "ndcg@3"] - result.table.loc[m, "ndcg@3"]
        assert comp.loc[f"model v1 - {m}", "ndcg_diff@3"] == pytest.approx(want, abs=1e-9)
        row = comp.loc[f"model v1 - {m}"]
        assert row["n_users"] == result.table.loc["model v1", "n_users"]
        assert row["ndcg_diff_ci_low@3"] <= row["ndcg_diff@3"] <= row["ndcg_diff_ci_high@3"]
    assert metrics.where((F.col("method") == "model v1 - als") & (F.col("metric") == "ndcg_diff")
                         & (F.col("k") == 3)).count() == 1
    assert Path(result.report_path).read_text().count("data:image/png;base64") >= 4
