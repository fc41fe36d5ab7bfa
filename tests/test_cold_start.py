"""Users without history (score.cold_start) and identical model inputs scored once: expected values by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import DoubleType

from adrec_spark import schema as S
from adrec_spark.scoring import candidates as C
from adrec_spark.scoring.pipeline import score_distinct_inputs, shown_categories, with_shown_categories

IDS = [f"a{i}" for i in range(12)]
CATS = ["news"] * 4 + ["sport"] * 4 + ["travel"] * 4
# a0..a11: clicks and impressions chosen so that the bound orders them a11 > a10 > ... > a0 (see test)
CLICKS = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
IMPRESSIONS = np.full(12, 100)


def _index(z: float = 1.0) -> C.AdIndex:
    ucb = C.click_rate_ucb(CLICKS, IMPRESSIONS, z=z, prior=0.1, strength=10.0)
    emb = np.eye(12, dtype=np.float32)
    return C.build_index(IDS, emb, np.zeros(12), CLICKS, categories=CATS, ucb=ucb)


def _explore(**kw) -> C.ColdStart:
    return C.ColdStart(**{"strategy": "explore", "pool_size": 6, "shown_fraction": 0.5, "date": "2024-01-03", **kw})


def test_click_rate_ucb_by_hand() -> None:
    # 5 clicks in 90 impressions, prior 0.1 x 10: rate (5 + 1) / 100 = 0.06, se sqrt(.06 * .94 / 100)
    got = C.click_rate_ucb(np.array([5, 0]), np.array([90, 0]), z=2.0, prior=0.1, strength=10.0)
    assert got[0] == pytest.approx(0.06 + 2 * np.sqrt(0.06 * 0.94 / 100))
    # never shown: the prior with the widest bound: 0.1 + 2 sqrt(.09 / 10)
    assert got[1] == pytest.approx(0.1 + 2 * np.sqrt(0.09 / 10))
    # a rate above 1 (clicks without impressions) is clipped: rate 1, no width
    assert C.click_rate_ucb(np.array([50]), np.array([0]), z=1.0, prior=0.1, strength=10.0)[0] == 1.0


def test_unknown_users_get_different_lists_that_a_rerun_repeats() -> None:
    index = _index()
    cold = _explore()
    a = C.retrieve(index, None, [], C.POPULAR, top_n=0, prior_n=0, popular_n=3, cold=cold, user_id="u1")
    b = C.retrieve(index, None, [], C.POPULAR, top_n=0, prior_n=0, popular_n=3, cold=cold, user_id="u2")
    assert len(a) == len(b) == 3
    assert a != b
    assert a == C.retrieve(index, None, [], C.POPULAR, top_n=0, prior_n=0, popular_n=3, cold=cold, user_id="u1")
    # another date draws again
    other = [C.retrieve(index, None, [], C.POPULAR, top_n=0, prior_n=0, popular_n=3,
                        cold=_explore(date=f"2024-01-{d:02d}"), user_id="u1") for d in range(4, 12)]
    assert any(o != a for o in other)


def test_exploration_draws_only_from_the_top_n_pool() -> None:
    index = _index()
    # by hand: equal impressions, so the bound grows with the clicks: the top 6 are a11..a6; a9 is clicked
    # (blocked), so the pool of 6 is a11, a10, a8, a7, a6, a5
    pool = {"a11", "a10", "a8", "a7", "a6", "a5"}
    seen: set[str] = set()
    for u in range(200):
        got = C.retrieve(index, None, ["a9"], C.POPULAR, top_n=0, prior_n=0, popular_n=4, cold=_explore(),
                         user_id=f"u{u}")
        ads = {a for a, _ in got}
        assert len(ads) == 4 and ads <= pool, got
        assert {s for _, s in got} == {"explore"}
        seen |= ads
    assert seen == pool  # every ad of the pool gets drawn for some user: coverage grows


def test_shown_users_get_the_categories_they_were_shown() -> None:
    index = _index(z=0.0)
    cold = _explore(shown_fraction=0.5)
    news = C.retrieve(index, None, [], C.SHOWN, top_n=0, prior_n=0, popular_n=4, cold=cold, user_id="u1",
                      shown_share={"news": 1.0})
    travel = C.retrieve(index, None, [], C.SHOWN, top_n=0, prior_n=0, popular_n=4, cold=cold, user_id="u1",
                        shown_share={"travel": 0.75, "news": 0.25})
    # half of 4 from the shown categories, best bound first: news a3, a2; travel quota round(2 * .75) = 2:
    # a11, a10 (news' quota is then used up)
    assert [a for a, s in news if s == "shown"] == ["a3", "a2"]
    assert [a for a, s in travel if s == "shown"] == ["a11", "a10"]
    assert news != travel
    assert sum(1 for _, s in news if s == "explore") == 2


def test_popular_strategy_keeps_the_most_clicked() -> None:
    index = _index()
    got = C.retrieve(index, None, ["a11"], C.SHOWN, top_n=0, prior_n=0, popular_n=3,
                     cold=_explore(strategy="popular"), user_id="u1", shown_share={"news": 1.0})
    assert got == [("a10", "popular"), ("a9", "popular"), ("a8", "popular")]


def test_retrieve_partition_reads_shown_categories_as_arrow_gives_them() -> None:
    index = _index(z=0.0)
    df = pd.DataFrame({"user_id": ["u1", "u2"], "embedding": [None, None], "clicked_ad_ids": [[], []],
                       "strategy": [C.SHOWN, C.SHOWN], "category_clicks": [None, None], "user_clicks": [0, 0],
                       "shown_categories": [[("sport", 3)], {"news": 2}]})
    out = next(C.retrieve_partition(iter([df]), index, top_n=0, prior_n=0, popular_n=2, cold=_explore()))
    shown = out[out["source"] == "shown"].groupby("user_id")["ad_id"].apply(list).to_dict()
    assert shown == {"u1": ["a7"], "u2": ["a3"]}


def test_shown_categories_and_strategy(spark) -> None:
    events = spark.createDataFrame(
        [("u1", "a0", S.IMPRESSION), ("u1", "a1", S.IMPRESSION), ("u1", "a5", S.IMPRESSION),
         ("u1", "a5", S.CLICK), ("u2", "gone", S.IMPRESSION), ("u3", "a0", S.IMPRESSION)],
        "user_id string, ad_id string, event_type string")
    ads = spark.createDataFrame([(a, c) for a, c in zip(IDS, CATS, strict=True)], "ad_id string, category string")
    shown = {r["user_id"]: dict(r["shown_categories"]) for r in shown_categories(events, ads).collect()}
    assert shown == {"u1": {"news": 2, "sport": 1}, "u2": {"unknown": 1}, "u3": {"news": 1}}
    users = spark.createDataFrame([("u1", C.POPULAR), ("u3", C.PERSONALIZED), ("u4", C.POPULAR)],
                                  "user_id string, strategy string")
    got = {r["user_id"]: (r["strategy"], r["shown_categories"] and dict(r["shown_categories"]))
           for r in with_shown_categories(users, shown_categories(events, ads)).collect()}
    assert got == {"u1": (C.SHOWN, {"news": 2, "sport": 1}), "u3": (C.PERSONALIZED, None), "u4": (C.POPULAR, None)}


def test_identical_inputs_are_scored_once_with_the_scores_of_scoring_each(spark) -> None:
    rows = [("u1", "a1", "", "ad one", 0.5), ("u2", "a1", "", "ad one", 0.5), ("u3", "a1", "", "ad one", 0.5),
            ("u1", "a2", "", "ad two", 0.5), ("u2", "a2", "", "ad two", 0.5),
            ("u4", "a1", "clicked: x", "ad one", 0.5),  # another history: its own input
            ("u5", "a1", "", "ad one", 0.25),  # another numeric feature: its own input
            ("u6", "a3", None, "ad three", 0.5), ("u7", "a3", None, "ad three", 0.5)]  # null history: null-safe
    pairs = spark.createDataFrame(rows, "user_id string, ad_id string, history_text string, ad_text string, "
                                        "x float")
    calls = spark.sparkContext.accumulator(0)

    @pandas_udf(DoubleType())
    def fake_score(ad: pd.Series, hist: pd.Series, x: pd.Series) -> pd.Series:
        calls.add(len(ad))
        return ad.str.len() + hist.fillna("").str.len() * 10 + x * 100

    cols = ["history_text", "ad_text", "x"]
    def score(df):
        return df.withColumn(S.SCORE, fake_score(F.col("ad_text"), F.col("history_text"), F.col("x")))

    out = score_distinct_inputs(pairs, score, input_cols=cols, partitions=2).toPandas()
    assert calls.value == 5  # distinct inputs, not the 9 pairs
    assert len(out) == 9 and sorted(out.columns) == sorted([*pairs.columns, S.SCORE])
    want = {(u, a): len(ad) + len(h or "") * 10 + x * 100 for u, a, h, ad, x in rows}  # scoring each pair
    assert {(r.user_id, r.ad_id): r.score for r in out.itertuples()} == pytest.approx(want)
