"""The scoring stage in Spark: token columns made once per text, pairs scored from ids in a mapInArrow stage
that alone carries the GPU resource profile, and the bounded per-worker model cache."""

from __future__ import annotations

import re
import weakref

import numpy as np
import pytest
from pyspark.sql import functions as F

from adrec_spark import model_udf as udf
from adrec_spark import schema as S
from adrec_spark.config import ScoreGpuConfig
from adrec_spark.errors import ConfigError
from adrec_spark.etl import features
from adrec_spark.model.encoder import load_tokenizer
from adrec_spark.model.inference import ModelCache, Scorer
from adrec_spark.model.relevance import ModelSpec, build_model
from adrec_spark.model_udf import UdfSettings, with_token_ids
from adrec_spark.scoring.pipeline import pair_features
from adrec_spark.scoring.stages import check_profile_supported, score_pairs, scoring_profile
from tests.tiny_bert import make_tiny_bert

NUMERIC = list(S.NUMERIC_FEATURES)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-scoring")
    tiny = make_tiny_bert(tmp / "tiny")
    spec = ModelSpec(NUMERIC, [0.0] * 6, [1.0] * 6, max_length=24)
    model, tok = build_model(tiny, spec, seed=3).eval(), load_tokenizer(tiny)
    model.save(tmp / "m", tok)
    return tmp / "m"


def _frames(spark):
    users = spark.createDataFrame(
        [("u1", "clicked: travel flights hotel deal", 3, 1, {"travel": 1}),
         ("u2", "", 0, 0, {}),
         ("u3", "clicked: " + "coffee pizza wine " * 12, 9, 4, {"food": 2}),  # longer than the pair limit
         ("u4", None, 1, 0, {})],
        f"{S.USER_ID} string, {S.HISTORY_TEXT} string, {features.USER_IMPRESSIONS} long, "
        f"{features.USER_CLICKS} long, {features.CATEGORY_CLICKS} map<string,long>")
    ads = spark.createDataFrame(
        [("a1", "great cheap flights deal", "travel", 120.0, 40, 3),
         ("a2", "best coffee " * 20, "food", 4.5, 10, 0),
         ("a3", "   ", "food", None, 0, 0)],
        f"{S.AD_ID} string, {S.AD_TEXT} string, {S.CATEGORY} string, {S.PRICE} double, "
        f"{features.AD_IMPRESSIONS} long, {features.AD_CLICKS} long")
    pairs = users.select(S.USER_ID).crossJoin(ads.select(S.AD_ID)).withColumn("source", F.lit("all"))
    return users, ads, pairs


def _scored(spark, saved, profile=None):
    users, ads, pairs = _frames(spark)
    settings = UdfSettings(model_file=str(saved), precision="fp32", batch_size=4)
    feats = pair_features(pairs, with_token_ids(users, settings, text_col=S.HISTORY_TEXT, prefix="history"),
                          with_token_ids(ads, settings, text_col=S.AD_TEXT, prefix="ad"), rate_prior=0.05,
                          rate_prior_strength=10.0, tokens=True)
    texts = pair_features(pairs, users, ads, rate_prior=0.05, rate_prior_strength=10.0)
    return score_pairs(feats.repartition(2), settings, numeric_features=NUMERIC, out_col=S.SCORE,
                       profile=profile), texts


def test_scores_from_token_columns_equal_scoring_the_texts(spark, saved) -> None:
    scored, texts = _scored(spark, saved)
    got = scored.toPandas().sort_values([S.USER_ID, S.AD_ID]).reset_index(drop=True)
    ref = texts.toPandas().sort_values([S.USER_ID, S.AD_ID]).reset_index(drop=True)
    assert list(got.columns) == [S.USER_ID, S.AD_ID, "source", S.SCORE] and len(got) == 12
    want = Scorer(saved, precision="fp32").score(ref[S.AD_TEXT], ref[S.HISTORY_TEXT], ref[NUMERIC].to_numpy())
    np.testing.assert_allclose(got[S.SCORE].to_numpy(), want, atol=1e-5)


def _profiled_nodes(df) -> list[str]:
    plan = df._jdf.queryExecution().analyzed().toString()
    return [line for line in plan.splitlines() if "Profile:" in line]


def test_only_the_scoring_stage_asks_for_a_gpu(spark, saved) -> None:
    profile = scoring_profile(ScoreGpuConfig(task_amount=0.25, task_cpus=2))
    scored, _ = _scored(spark, saved, profile=profile)
    out = scored.select(S.USER_ID, S.AD_ID, S.SCORE).where(F.col(S.SCORE) > 0)  # downstream work: no GPU
    nodes = _profiled_nodes(out)
    assert len(nodes) == 1 and "MapInArrow" in nodes[0]
    assert re.search(r"task resources: .*cpus, amount: 2\.0.*gpu, amount: 0\.25", nodes[0])
    assert "executor resources: ," in nodes[0]  # a task-only profile: the default executors are reused
    assert _profiled_nodes(_scored(spark, saved)[0]) == []  # without score.gpu.task_amount: no profile
    assert scoring_profile(ScoreGpuConfig()) is None


def test_executor_gpus_in_the_profile_when_asked() -> None:
    p = scoring_profile(ScoreGpuConfig(task_amount=0.5, executor_amount=2, executor_cores=8,
                                       discovery_script="/opt/gpus.sh"))
    gpu = p.executorResources["gpu"]
    assert (gpu.amount, gpu.discoveryScript) == (2, "/opt/gpus.sh")
    assert p.executorResources["cores"].amount == 8
    assert p.taskResources["gpu"].amount == 0.5


def test_gpu_config_checks() -> None:
    with pytest.raises(ConfigError, match="task_amount"):
        ScoreGpuConfig(task_amount=1.5)
    with pytest.raises(ConfigError, match=r"needs score\.gpu\.task_amount"):
        ScoreGpuConfig(executor_amount=1)
    assert ScoreGpuConfig(task_amount=2).task_amount == 2
    with pytest.raises(ConfigError, match="need a cluster"):
        check_profile_supported("local[2]", ScoreGpuConfig(task_amount=0.25))
    check_profile_supported("local[2]", ScoreGpuConfig())
    check_profile_supported("spark://host:7077", ScoreGpuConfig(task_amount=0.25))
    check_profile_supported("local-cluster[1,1,1024]", ScoreGpuConfig(task_amount=0.25))


def test_a_job_runs_one_precision_decided_on_an_executor(spark, saved) -> None:
    """``auto`` becomes one precision before any task scores: measured by one task (on an executor, whose
    hardware decides) or bf16 for a GPU stage; an explicit precision is kept as given."""
    from adrec_spark.model.inference import PRECISIONS

    auto = UdfSettings(model_file=str(saved), precision="auto", threads=1)
    measured = udf.job_precision(spark, auto, gpu_stage=False)
    assert measured in PRECISIONS
    assert udf.job_precision(spark, auto, gpu_stage=False) == measured
    assert udf.job_precision(spark, auto, gpu_stage=True) == "bf16"
    assert udf.job_precision(spark, UdfSettings(model_file=str(saved), precision="int8"), gpu_stage=False) == "int8"


def test_a_new_model_version_evicts_the_old_one(saved, tmp_path, monkeypatch) -> None:
    import shutil

    v2 = tmp_path / "v2"
    shutil.copytree(saved, v2)
    cache = ModelCache()
    monkeypatch.setattr(udf, "WORKER_MODELS", cache)
    monkeypatch.setattr(udf, "_model_path", lambda f: f)
    a = udf.get_scorer(UdfSettings(model_file=str(saved), precision="fp32"), device="cpu")
    assert udf.get_scorer(UdfSettings(model_file=str(saved), precision="fp32"), device="cpu") is a
    udf.get_scorer(UdfSettings(model_file=str(saved), precision="bf16"), device="cpu")  # same version: kept
    assert len(cache) == 2
    held = weakref.ref(a.model)
    del a
    b = udf.get_scorer(UdfSettings(model_file=str(v2), precision="fp32"), device="cpu")
    assert cache.folders() == [str(v2)]
    assert held() is None  # version 1's weights are gone from the worker
    assert udf.get_scorer(UdfSettings(model_file=str(v2), precision="fp32"), device="cpu") is b
    freed = []
    monkeypatch.setattr("gc.collect", lambda: freed.append(True))
    cache.evict()
    assert len(cache) == 0 and freed


def test_the_worker_cache_holds_one_folder_per_role() -> None:
    """The fine-tuned model and the pretrained encoder share the one worker cache without evicting each other;
    a second folder for a role evicts only that role's first one."""
    cache = ModelCache()
    loads: list[tuple] = []

    def get(key: tuple) -> object:
        return cache.get(key, lambda: loads.append(key) or object())

    model_v1 = get(("model", "/m/v1", "cpu"))
    get(("tokenizer", "/m/v1"))
    get(("pretrained", "minilm"))
    assert get(("model", "/m/v1", "cpu")) is model_v1 and len(loads) == 3
    get(("model", "/m/v2", "cpu"))
    assert cache.folders() == ["/m/v1", "minilm", "/m/v2"]  # the tokenizer of v1 stays until its role moves on
    get(("tokenizer", "/m/v2"))
    assert cache.folders() == ["minilm", "/m/v2"]


def test_model_udf_names_the_outputs_it_knows() -> None:
    with pytest.raises(ValueError, match=r"'embedding', 'parts', 'score', 'token_ids'.*'probs'"):
        udf.model_udf(UdfSettings(model_file="unused"), output="probs")


@pytest.mark.slow
def test_on_a_cluster_only_the_profiled_stage_gets_the_gpu(saved) -> None:
    """A real standalone cluster (local-cluster) whose executor has one (fake) GPU: a plain stage's tasks get
    none, the scoring profile's tasks get it (two at a time with 0.5 each), and score_pairs runs with it."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    jars = ",".join(str(p) for p in sorted((root / ".jars").glob("*.jar")))
    out = subprocess.run([sys.executable, str(root / "tests" / "scripts" / "gpu_stage_profile.py"), str(saved),
                          jars], capture_output=True, text=True, timeout=900, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["plain"] == ["", ""]
    assert seen["profiled"] == ["0", "0"]
    assert len(seen["scores"]) == 2 and all(0 < s < 1 for s in seen["scores"])


def test_the_cascade_embeds_users_on_every_core_when_the_profiles_sit_in_one_file(spark, saved, cfg) -> None:
    # A date's profiles often come in one file, so in one task: the cascade must spread them before it runs an
    # encoder pass per user, and still find each user the candidates it finds from any layout.
    from adrec_spark.config import replace
    from adrec_spark.scoring import candidates as C
    from adrec_spark.scoring.pipeline import candidate_pairs, embed_users

    settings = UdfSettings(model_file=str(saved), precision="fp32", batch_size=4)
    ad_texts = ["cheap flights deal", "coffee beans", "hiking boots", "wine club", "hotel rooms", "pizza"]
    ids = [f"a{i}" for i in range(len(ad_texts))]
    vecs = udf.get_scorer(settings).embed(ad_texts)
    index = C.build_index(ids, vecs, np.linspace(0.9, 0.1, len(ids)), np.zeros(len(ids)),
                          categories=["travel", "food", "outdoor", "food", "travel", "food"])
    ads = spark.createDataFrame([(a,) for a in ids], f"{S.AD_ID} string")
    users = spark.createDataFrame(
        [(f"u{i}", f"clicked: {ad_texts[i % 6]} {ad_texts[(i * 5) % 6]}", C.PERSONALIZED, [ids[i % 6]], {}, 0, None)
         for i in range(12)],
        f"{S.USER_ID} string, retrieval_text string, {S.STRATEGY} string, clicked_ad_ids array<string>, "
        f"{features.CATEGORY_CLICKS} map<string,long>, {features.USER_CLICKS} long, "
        "shown_categories map<string,bigint>")
    embedded = embed_users(users.coalesce(1), settings)
    per_task = embedded.rdd.mapPartitions(lambda rows: [sum(not r["embedding_reused"] for r in rows)]).collect()
    assert sum(per_task) == 12 and sum(n > 0 for n in per_task) == spark.sparkContext.defaultParallelism > 1
    cfg = replace(cfg, "score.retrieval_top_n=2", "score.prior_top_n=1")
    one_file = candidate_pairs(embedded, ads, index, cfg)
    spread = candidate_pairs(embed_users(users.repartition(3), settings), ads, index, cfg)
    assert sorted(map(tuple, one_file.collect())) == sorted(map(tuple, spread.collect()))
    assert one_file.count() == 12 * 3


def test_users_take_the_base_embedding_of_their_retrieval_text_and_only_the_rest_are_embedded(spark, saved) -> None:
    import hashlib

    from adrec_spark.scoring import candidates as C
    from adrec_spark.scoring.pipeline import embed_users

    settings = UdfSettings(model_file=str(saved), precision="fp32", batch_size=4)
    users = spark.createDataFrame(
        [("u1", "clicked: coffee beans", C.PERSONALIZED), ("u2", "clicked: coffee beans", C.PERSONALIZED),
         ("u3", "clicked: hiking boots", C.PERSONALIZED), ("u4", "searched: wine", C.QUERY),
         ("u5", "", C.POPULAR), ("u6", "", C.SHOWN)],
        f"{S.USER_ID} string, retrieval_text string, {S.STRATEGY} string")
    sha = {t: hashlib.sha256(t.encode()).hexdigest() for t in ("clicked: coffee beans", "clicked: hiking", "")}
    marker = [1.0, 0.0, 0.0, 0.0]  # not an embedding the model makes: it shows where the base's one was taken
    base = spark.createDataFrame([(sha["clicked: coffee beans"], marker), (sha["clicked: hiking"], marker),
                                  (sha[""], marker)], "retrieval_text_hash string, embedding array<float>")
    got = {r[S.USER_ID]: r for r in embed_users(users, settings, base=base).collect()}
    # u1 kept its text and u2 is a new user with the same one: both take the base's embedding
    assert [got[u]["embedding"] for u in ("u1", "u2")] == [marker, marker]
    assert got["u1"]["retrieval_text_hash"] == sha["clicked: coffee beans"]
    assert [got[u]["embedding_reused"] for u in ("u1", "u2", "u3", "u4", "u5", "u6")] == [True, True] + [False] * 4
    # u3's text changed and u4's was never embedded: the encoder embeds them
    want = udf.get_scorer(settings).embed(["clicked: hiking boots", "searched: wine"])
    np.testing.assert_allclose([got["u3"]["embedding"], got["u4"]["embedding"]], want, atol=1e-5)
    # users without history or searches are matched without an embedding, whatever the base holds
    assert got["u5"]["embedding"] is None and got["u6"]["embedding"] is None
    no_base = {r[S.USER_ID]: r for r in embed_users(users, settings).collect()}
    np.testing.assert_allclose(no_base["u1"]["embedding"], udf.get_scorer(settings).embed(["clicked: coffee beans"])[0],
                               atol=1e-5)
    assert not any(r["embedding_reused"] for r in no_base.values())
