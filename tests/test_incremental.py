"""Incremental scoring: change detection transforms on small inline frames, and the full-or-incremental plan."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from adrec_spark import schema as S
from adrec_spark.etl.features import with_content_hash
from adrec_spark.scoring import incremental as inc

D1, D2, D3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
SETTINGS = {"model_name": "m", "model_version": 3, "precision": "fp32", "rate_prior": 0.1,
            "rate_prior_strength": 10.0, "package_version": "0.1.0"}


def _hashes(df) -> dict[str, str]:
    return {r[0]: r[1] for r in with_content_hash(df).select(S.USER_ID, S.CONTENT_HASH).collect()}


def test_content_hash_sees_every_column_but_the_date_and_not_the_order_of_a_map(spark) -> None:
    schema = "ds date, user_id string, history_text string, cats map<string,bigint>, recent array<string>"
    day1, day2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
    a = spark.createDataFrame([
        (day1, "same", "clicked: x", {"a": 1, "b": 2}, ["x", "y"]),
        (day1, "text", "clicked: x", {"a": 1}, ["x"]),
        (day1, "map", "h", {"a": 1}, ["x"]),
        (day1, "order", "h", {"a": 1}, ["x", "y"]),
        (day1, "null", None, None, None),
    ], schema)
    b = spark.createDataFrame([
        (day2, "same", "clicked: x", {"b": 2, "a": 1}, ["x", "y"]),  # other date, map built in another order
        (day2, "text", "clicked: y", {"a": 1}, ["x"]),
        (day2, "map", "h", {"a": 2}, ["x"]),
        (day2, "order", "h", {"a": 1}, ["y", "x"]),  # newest first: the order is content
        (day2, "null", None, None, None),
    ], schema)
    ha, hb = _hashes(a), _hashes(b)
    assert ha["same"] == hb["same"] and ha["null"] == hb["null"]
    assert all(ha[k] != hb[k] for k in ("text", "map", "order"))
    assert len(set(ha.values())) == 5  # the user id is content too: no two rows alike
    assert all(len(h) == 64 for h in ha.values())


def test_compare_snapshots_names_new_changed_unchanged_and_gone(spark) -> None:
    now = spark.createDataFrame([("a", "h1"), ("b", "h2"), ("c", "h3"), ("n", None)],
                                "ad_id string, content_hash string")
    then = spark.createDataFrame([("a", "h1"), ("b", "old"), ("g", "h9"), ("n", None)],
                                 "ad_id string, content_hash string")
    got = {r.ad_id: r.change for r in inc.compare_snapshots(now, then, key=S.AD_ID).collect()}
    # an unknown (null) hash is never taken as unchanged
    assert got == {"a": "unchanged", "b": "changed", "c": "new", "g": "gone", "n": "changed"}


def test_change_counts_count_users_and_ads_by_change(spark) -> None:
    users = spark.createDataFrame([("u1", "new"), ("u2", "new"), ("u3", "unchanged")], "user_id string, change string")
    ads = spark.createDataFrame([("a1", "gone"), ("a2", "changed"), ("a3", "new")], "ad_id string, change string")
    assert inc.change_counts(users, ads) == {"users_new": 2, "users_unchanged": 1, "ads_gone": 1, "ads_changed": 1,
                                             "ads_new": 1}


def test_compare_snapshots_names_a_missing_column(spark) -> None:
    df = spark.createDataFrame([("a",)], "ad_id string")
    with pytest.raises(Exception, match="content_hash"):
        inc.compare_snapshots(df, df, key=S.AD_ID)


def test_text_hashes_read_the_text_alone_and_a_null_as_empty(spark) -> None:
    df = spark.createDataFrame([("a", "red shoes"), ("b", "red shoes"), ("n", None), ("e", ""), ("c", "red shoes!")],
                               "ad_id string, ad_text string")
    got = {r.ad_id: r.h for r in inc.text_hashes(df, key=S.AD_ID, text=S.AD_TEXT, out="h").collect()}
    assert got["a"] == got["b"] == hashlib.sha256(b"red shoes").hexdigest()
    assert got["n"] == got["e"] == hashlib.sha256(b"").hexdigest()
    assert got["c"] != got["a"]


def test_text_logits_are_reused_by_text_input_not_by_pair(spark) -> None:
    """A pair tonight takes the base's text logit of the same (ad text, history text), whichever pair the base
    scored it for; a text the base never scored, or scored without a text logit, goes to the cross-encoder."""
    h = {t: hashlib.sha256(t.encode()).hexdigest() for t in ("", "hist1", "hist1 more", "hist2", "ad1", "ad2",
                                                              "ad2 v2", "ad3")}
    # the base: k1 (history "hist1") scored ad1 and ad2; k2 (no history) scored ad1; k3 ("hist2") ad3 without one
    base_scores = spark.createDataFrame([("k1", "a1", 0.7), ("k1", "a2", 0.6), ("k2", "a1", -0.5), ("k3", "a3", None)],
                                        "user_id string, ad_id string, text_logit double")
    base_users = spark.createDataFrame([("k1", h["hist1"]), ("k2", h[""]), ("k3", h["hist2"])],
                                       f"user_id string, {inc.HISTORY_TEXT_HASH} string")
    base_ads = spark.createDataFrame([("a1", h["ad1"]), ("a2", h["ad2"]), ("a3", h["ad3"])],
                                     f"ad_id string, {inc.AD_TEXT_HASH} string")
    base = inc.base_text_logits(base_scores, user_hashes=base_users, ad_hashes=base_ads)
    # tonight: u1 kept "hist1" (its counts may have moved), u4 is new without history, u5 wrote more history;
    # ad a2's text changed, a4 is new but reads like a1
    users = spark.createDataFrame([("u1", h["hist1"]), ("u4", h[""]), ("u5", h["hist1 more"]), ("u3", h["hist2"])],
                                  f"user_id string, {inc.HISTORY_TEXT_HASH} string")
    ads = spark.createDataFrame([("a1", h["ad1"]), ("a2", h["ad2 v2"]), ("a3", h["ad3"]), ("a4", h["ad1"])],
                                f"ad_id string, {inc.AD_TEXT_HASH} string")
    pairs = spark.createDataFrame([("u1", "a1", "similarity"), ("u1", "a2", "prior"), ("u1", "a4", "prior"),
                                   ("u4", "a1", "popular"), ("u5", "a1", "similarity"), ("u3", "a3", "prior")],
                                  "user_id string, ad_id string, source string")
    out = inc.with_reused_text_logits(pairs, user_hashes=users, ad_hashes=ads, base_logits=base)
    got = {(r.user_id, r.ad_id): (r.source, r[inc.REUSED]) for r in out.collect()}
    assert got == {("u1", "a1"): ("similarity", 0.7),  # the same texts as yesterday
                   ("u1", "a2"): ("prior", None),  # the ad's text changed
                   ("u1", "a4"): ("prior", 0.7),  # a new ad with a text the base scored for u1
                   ("u4", "a1"): ("popular", -0.5),  # a new user without history, like k2 yesterday
                   ("u5", "a1"): ("similarity", None),  # the history text grew
                   ("u3", "a3"): ("prior", None)}  # scored yesterday, but without a text logit


def test_base_embeddings_are_the_same_models_once_per_text(spark) -> None:
    rows = [("k1", "h1", [0.1, 0.2], "m", 3), ("k2", "h1", [0.1, 0.2], "m", 3), ("k3", "h2", [0.3, 0.4], "m", 3),
            ("k4", "h3", [0.5, 0.6], "m", 2), ("k5", "h4", [0.7, 0.8], "other", 3), ("k6", "h5", None, "m", 3)]
    base = spark.createDataFrame(rows, "user_id string, retrieval_text_hash string, embedding array<float>, "
                                       "model_name string, model_version int")
    got = inc.base_embeddings(base, model_name="m", model_version=3).toPandas()
    assert sorted(got[inc.RETRIEVAL_TEXT_HASH]) == ["h1", "h2"]  # not another version's, model's, or a null


def _run(day: dt.date, **settings) -> inc.BaseRun:
    return inc.BaseRun(day, settings.get("model_version", 3), {**SETTINGS, **settings}, 5, 7)


def test_plan_is_incremental_on_the_day_before_with_the_same_model_and_settings() -> None:
    plan = inc.plan_run(D3, [_run(D1), _run(D2)], SETTINGS, requested="incremental")
    assert plan.mode == "incremental" and plan.base == _run(D2) and plan.reason == ""


@pytest.mark.parametrize("runs, settings, kw, reason", [
    ([], SETTINGS, {}, "no scored date before 2024-01-03"),
    ([_run(D1)], SETTINGS, {}, "no completed scoring run for 2024-01-02 (a failed or skipped night; the last "
                               "scored date is 2024-01-01)"),
    ([_run(D3 + dt.timedelta(days=1))], SETTINGS, {}, "no scored date before 2024-01-03"),  # a later date only
    ([_run(D2, model_version=2)], SETTINGS, {}, "model changed since 2024-01-02: m v2 -> m v3"),
    ([_run(D2)], {**SETTINGS, "precision": "bf16"}, {},
     "settings that change scores differ from 2024-01-02: precision 'fp32' -> 'bf16'"),
    ([_run(D2)], SETTINGS, {"requested": "full"}, "score.mode is full"),
    ([_run(D2)], SETTINGS, {"forced_full": True}, "--full given"),
])
def test_plan_falls_back_to_full_with_the_reason(runs, settings, kw, reason) -> None:
    plan = inc.plan_run(D3, runs, settings, **{"requested": "incremental", **kw})
    assert (plan.mode, plan.base, plan.reason) == ("full", None, reason)


def test_score_settings_follow_the_model_and_the_feature_settings(cfg) -> None:
    from adrec_spark.config import replace

    base = inc.score_settings(cfg, "m", 1, precision="int8")
    assert inc.fingerprint(base) == inc.fingerprint(dict(reversed(list(base.items()))))
    for changed in (inc.score_settings(cfg, "m", 2, precision="int8"),
                    inc.score_settings(replace(cfg, "etl.rate_prior=0.2"), "m", 1, precision="int8"),
                    inc.score_settings(cfg, "m", 1, precision="bf16")):
        assert inc.fingerprint(changed) != inc.fingerprint(base)
    # candidates and the re-rank run in full every night: their settings do not stop a reuse
    assert inc.score_settings(replace(cfg, "score.top_k=3", "score.retrieval_top_n=5"), "m", 1,
                              precision="int8") == base


# --- several nights end to end (slow) --------------------------------------------------------------------------

TINY = ["model.max_length=64", "train.epochs=1", "train.batch_size=16", "train.eval_batch_size=64",
        "train.learning_rate=5e-4", "train.head_learning_rate=5e-3", "train.log_every_steps=10",
        "train.precision=fp32", "train.max_eval_rows=300", "train.zero_shot_baseline=false",
        "score.retrieval_top_n=6", "score.prior_top_n=3", "score.top_k=4", "score.batch_size=32",
        "score.popular_pool=8", "score.precision=fp32"]
START = dt.date(2024, 1, 1)
NIGHTS = [START + dt.timedelta(days=i) for i in range(3)]
SILENT = {f"u{i}" for i in range(8)}  # no events after the first night
NEW_ON = {f"u{i}": NIGHTS[1] for i in range(30, 33)} | {f"u{i}": NIGHTS[2] for i in range(33, 36)}


def _quiet(ad_id: str) -> bool:
    """Ads nobody sees after the first night (their counts, hence their rows, stay as they were)."""
    return ad_id is not None and int(ad_id[2:]) % 3 == 0


def _shape_landing(raw) -> None:
    """Silent users, users who appear later, quiet ads; on the third night a catalog with an ad added, one
    re-priced, one removed and one whose flight ends."""
    import json

    for night in NIGHTS:
        path = raw / "events" / f"date={night}" / "events-0.jsonl"
        keep = []
        for line in path.read_text().splitlines():
            e = json.loads(line)
            if NEW_ON.get(e["user_id"], night) > night:
                continue
            if night > NIGHTS[0] and (e["user_id"] in SILENT or _quiet(e["ad_id"])):
                continue
            keep.append(line)
        path.write_text("\n".join(keep) + "\n")
    first = raw / "ads" / f"date={NIGHTS[0]}" / "ads-0.jsonl"
    ads = [json.loads(line) for line in first.read_text().splitlines()]
    by_id = {a["ad_id"]: a for a in ads}
    by_id["ad00006"]["price"] = round(by_id["ad00006"]["price"] * 2 + 1, 2)
    del by_id["ad00009"]
    by_id["ad00012"]["end_date"] = NIGHTS[2].isoformat()
    by_id["ad00012"]["start_date"] = None
    by_id["ad09000"] = {**by_id["ad00003"], "ad_id": "ad09000", "title": "Brand new gym membership deal",
                        "start_date": None, "end_date": None}
    out = raw / "ads" / f"date={NIGHTS[2]}"
    out.mkdir(parents=True)
    (out / "ads-0.jsonl").write_text("".join(json.dumps(a) + "\n" for a in by_id.values()))


@pytest.fixture(scope="module")
def nights(spark, tmp_path_factory):
    """ETL of three nights, one model, and incremental scoring night after night; a copy of the lakehouse as
    it was after the first night."""
    import shutil

    from adrec_spark.etl.pipeline import run_etl
    from adrec_spark.samples.generator import GeneratorSpec, generate
    from adrec_spark.scoring.pipeline import run_scoring
    from adrec_spark.training.pipeline import run_training
    from tests.conftest import make_config
    from tests.tiny_bert import make_tiny_bert

    tmp = tmp_path_factory.mktemp("incremental")
    cfg = make_config(tmp, f"model.base_model={make_tiny_bert(tmp / 'tiny')}", *TINY, "score.mode=incremental")
    generate(GeneratorSpec(n_users=40, n_ads=30, n_events=2400, n_days=3, start=START, seed=5,
                           bad_rows_per_day=0), tmp / "raw")
    _shape_landing(tmp / "raw")
    for night in NIGHTS:
        run_etl(spark, cfg, night)
    assert run_training(spark, cfg).promoted
    results = {NIGHTS[0]: run_scoring(spark, cfg, NIGHTS[0])}
    after_first = tmp / "after-first-night"
    shutil.copytree(cfg.storage.lakehouse, after_first)
    for night in NIGHTS[1:]:
        results[night] = run_scoring(spark, cfg, night)
    return {"cfg": cfg, "tmp": tmp, "results": results, "after_first": after_first}


def _retrieval_texts(spark, cfg, night: dt.date) -> dict[str, str | None]:
    """Each user's retrieval text on ``night``, from the profiles by hand: the history text, else the searches;
    None for a user with neither (matched without an embedding)."""
    from pyspark.sql import functions as F

    profiles = (spark.read.format("delta").load(cfg.storage.table_path(S.USER_PROFILES))
                .where(F.col(S.DS) == night).toPandas())
    out = {}
    for user, history, queries in zip(profiles[S.USER_ID], profiles[S.HISTORY_TEXT], profiles["recent_queries"],
                                       strict=True):
        queries = list(queries) if queries is not None else []
        out[user] = history or (" | ".join(f"searched: {q}" for q in queries) if queries else None)
    return out


def _partition(spark, cfg, table: str, night: dt.date):
    from pyspark.sql import functions as F

    df = spark.read.format("delta").load(cfg.storage.table_path(table)).where(F.col(S.SCORE_DATE) == night)
    keys = {S.RECOMMENDATIONS: [S.USER_ID, S.RANK], S.USER_EMBEDDINGS: [S.USER_ID]}.get(table, [S.USER_ID, S.AD_ID])
    return df.toPandas().sort_values(keys).reset_index(drop=True)


def _assert_same_scores_and_lists(spark, got_cfg, want_cfg, night: dt.date) -> None:
    """Equal rows; scores and embeddings within float tolerance (fp32: the micro-batches differ), top-K and
    reasons identical."""
    import numpy as np

    got, want = (_partition(spark, c, S.USER_EMBEDDINGS, night) for c in (got_cfg, want_cfg))
    keys = [S.USER_ID, inc.RETRIEVAL_TEXT_HASH, S.MODEL_VERSION]
    assert len(got) == len(want) > 0 and got[keys].equals(want[keys]), night
    np.testing.assert_allclose(np.stack(got[inc.EMBEDDING]), np.stack(want[inc.EMBEDDING]), atol=1e-5)

    for table, exact in ((S.USER_AD_SCORES, [S.USER_ID, S.AD_ID, "candidate_source", S.MODEL_VERSION]),
                         (S.RECOMMENDATIONS, [S.USER_ID, S.RANK, S.AD_ID, S.REASON, S.STRATEGY, S.MODEL_VERSION])):
        got, want = _partition(spark, got_cfg, table, night), _partition(spark, want_cfg, table, night)
        assert len(got) == len(want) > 0, (table, night)
        assert got[exact].equals(want[exact]), (table, night)
        np.testing.assert_allclose(got[S.SCORE].to_numpy(), want[S.SCORE].to_numpy(), atol=1e-5)


@pytest.mark.slow
def test_incremental_nights_equal_full_runs_on_the_same_inputs(spark, nights) -> None:
    import shutil

    from adrec_spark.config import replace
    from adrec_spark.scoring.pipeline import run_scoring

    cfg, results = nights["cfg"], nights["results"]
    assert results[NIGHTS[0]].mode == "full" and "no scored date before" in results[NIGHTS[0]].fallback_reason
    for night in NIGHTS[1:]:
        r = results[night]
        assert (r.mode, r.base_date) == ("incremental", str(night - dt.timedelta(days=1)))
        assert 0 < r.pairs_reused < r.pairs_scored  # some pairs carried over, some scored
        assert r.changes["users_unchanged"] > 0 and r.changes["users_changed"] > 0 and r.changes["users_new"] > 0
        assert r.changes["ads_unchanged"] > 0 and r.changes["ads_changed"] > 0
    assert results[NIGHTS[2]].changes["ads_new"] == 1 and results[NIGHTS[2]].changes["ads_gone"] >= 2
    for night in NIGHTS[1:]:  # the users whose retrieval text the night before embedded are not embedded again
        texts, before = _retrieval_texts(spark, cfg, night), _retrieval_texts(spark, cfg, night - dt.timedelta(days=1))
        want = sum(t is not None and t in set(before.values()) for t in texts.values())
        assert 0 < results[night].embeddings_reused == want < sum(t is not None for t in texts.values())
    full_cfg = replace(cfg, f"storage.lakehouse={nights['tmp'] / 'full'}")
    shutil.copytree(cfg.storage.lakehouse, full_cfg.storage.lakehouse)
    for night in NIGHTS[1:]:
        assert run_scoring(spark, full_cfg, night, full=True).mode == "full"
        _assert_same_scores_and_lists(spark, cfg, full_cfg, night)
    # ads that left the catalog or whose flight ended are in no list of the third night
    recs = _partition(spark, cfg, S.RECOMMENDATIONS, NIGHTS[2])
    scores = _partition(spark, cfg, S.USER_AD_SCORES, NIGHTS[2])
    assert not {"ad00009", "ad00012"} & (set(recs[S.AD_ID]) | set(scores[S.AD_ID]))
    runs = (spark.read.format("delta").load(cfg.storage.table_path(S.SCORING_RUNS)).toPandas()
            .sort_values(S.SCORE_DATE).reset_index(drop=True))
    assert list(runs["mode"]) == ["full", "incremental", "incremental"]
    assert [str(d) if d is not None else None for d in runs["base_date"]] == [None, str(NIGHTS[0]), str(NIGHTS[1])]
    assert runs["pairs_reused"].tolist() == [0, *(results[n].pairs_reused for n in NIGHTS[1:])]
    assert runs["embeddings_reused"].tolist() == [0, *(results[n].embeddings_reused for n in NIGHTS[1:])]
    assert runs["base_embeddings_version"].iloc[1:].notna().all()
    assert runs["base_scores_version"].iloc[1:].notna().all() and runs["user_profiles_version"].notna().all()


@pytest.mark.slow
def test_a_failed_night_leaves_the_tables_and_the_next_night_runs_in_full_with_the_reason(spark, nights,
                                                                                          monkeypatch, caplog):
    import logging

    from adrec_spark.config import replace
    from adrec_spark.scoring import pipeline
    from adrec_spark.scoring.pipeline import run_scoring

    cfg = replace(nights["cfg"], f"storage.lakehouse={nights['after_first']}")
    tables_ = (S.USER_AD_SCORES, S.USER_EMBEDDINGS, S.RECOMMENDATIONS, S.SCORING_RUNS)

    def read(table):
        return spark.read.format("delta").load(cfg.storage.table_path(table)).toPandas()

    before = {t: read(t) for t in tables_}

    def boom(*args, **kwargs):
        raise RuntimeError("injected: re-rank failed")

    with monkeypatch.context() as m:
        m.setattr(pipeline, "rerank", boom)
        with pytest.raises(RuntimeError, match="injected"):
            run_scoring(spark, cfg, NIGHTS[1])  # incremental on the first night, fails after writing its scores
    for t in tables_:  # the first night's rows as they were, nothing of the failed night
        after = read(t)
        assert len(after) == len(before[t]) and set(after[S.SCORE_DATE].astype(str)) == {str(NIGHTS[0])}, t

    with caplog.at_level(logging.WARNING, logger="adrec_spark.scoring.pipeline"):
        third = run_scoring(spark, cfg, NIGHTS[2])
    reason = (f"no completed scoring run for {NIGHTS[1]} (a failed or skipped night; the last scored date is "
              f"{NIGHTS[0]})")
    assert (third.mode, third.fallback_reason) == ("full", reason)
    assert reason in caplog.text
    _assert_same_scores_and_lists(spark, cfg, nights["cfg"], NIGHTS[2])

    second = run_scoring(spark, cfg, NIGHTS[1])  # the rerun of the failed night completes, incrementally
    assert (second.mode, second.base_date) == ("incremental", str(NIGHTS[0]))
    _assert_same_scores_and_lists(spark, cfg, nights["cfg"], NIGHTS[1])
