"""Incremental scoring: change detection transforms on small inline frames, and the full-or-incremental plan."""

from __future__ import annotations

import datetime as dt

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


def test_compare_snapshots_names_a_missing_column(spark) -> None:
    df = spark.createDataFrame([("a",)], "ad_id string")
    with pytest.raises(Exception, match="content_hash"):
        inc.compare_snapshots(df, df, key=S.AD_ID)


def test_only_pairs_of_an_unchanged_user_and_an_unchanged_ad_that_the_base_scored_are_reused(spark) -> None:
    pairs = spark.createDataFrame(
        [("u1", "a1", "similarity"), ("u1", "a2", "prior"), ("u1", "a3", "prior"), ("u1", "a4", "prior"),
         ("u2", "a1", "similarity"), ("u3", "a1", "popular")],
        "user_id string, ad_id string, source string")
    users = spark.createDataFrame([("u1", "unchanged"), ("u2", "changed"), ("u3", "new")],
                                  "user_id string, change string")
    ads = spark.createDataFrame([("a1", "unchanged"), ("a2", "changed"), ("a3", "new"), ("a4", "unchanged"),
                                 ("a9", "gone")], "ad_id string, change string")
    keys = spark.createDataFrame([("u1", "k1"), ("u2", "k2"), ("u3", "k3")], "user_id string, _key string")
    # the base holds the output id (here pseudonymous): u1's pairs are found under k1
    base = spark.createDataFrame([("k1", "a1", 0.7), ("k1", "a2", 0.6), ("k2", "a1", 0.5), ("u1", "a4", 0.4),
                                  ("k3", "a1", 0.3), ("k1", "a9", 0.2)],
                                 "user_id string, ad_id string, score double")
    out = inc.with_reused_scores(pairs, user_changes=users, ad_changes=ads, user_keys=keys, base_scores=base)
    got = {(r.user_id, r.ad_id): (r.source, r.reused_score) for r in out.collect()}
    assert got == {("u1", "a1"): ("similarity", 0.7),  # both unchanged, scored yesterday
                   ("u1", "a2"): ("prior", None),  # the ad changed
                   ("u1", "a3"): ("prior", None),  # a new ad
                   ("u1", "a4"): ("prior", None),  # not scored under the output id yesterday
                   ("u2", "a1"): ("similarity", None),  # the user changed
                   ("u3", "a1"): ("popular", None)}  # a new user


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

    base = inc.score_settings(cfg, "m", 1)
    assert inc.fingerprint(base) == inc.fingerprint(dict(reversed(list(base.items()))))
    for changed in (inc.score_settings(cfg, "m", 2), inc.score_settings(replace(cfg, "etl.rate_prior=0.2"), "m", 1),
                    inc.score_settings(replace(cfg, "score.precision=bf16"), "m", 1)):
        assert inc.fingerprint(changed) != inc.fingerprint(base)
    # candidates and the re-rank run in full every night: their settings do not stop a reuse
    assert inc.score_settings(replace(cfg, "score.top_k=3", "score.retrieval_top_n=5"), "m", 1) == base
