"""Point-in-time features against hand-computed values, and a test that no future event leaks in."""

from __future__ import annotations

import datetime as dt
import math
import random

import pytest
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.etl import features

BASE = dt.datetime(2024, 1, 2)
EV_COLS = "ds date, event_id string, user_id string, ad_id string, event_type string, event_time timestamp, " \
          "event_ts double, text string, value double"
AD_COLS = "ad_id string, title string, category string, advertiser_id string, price double, ad_text string"


def _events(spark, rows):
    out = []
    for eid, user, ad, kind, sec, *text in rows:
        t = BASE + dt.timedelta(seconds=sec)
        out.append((BASE.date(), eid, user, ad, kind, t, t.replace(tzinfo=dt.timezone.utc).timestamp(),
                    text[0] if text else None, None))
    return spark.createDataFrame(out, EV_COLS)


@pytest.fixture
def ads(spark):
    return spark.createDataFrame([
        ("a1", "Alpha", "x", "adv1", 9.0, "Alpha | about alpha"),
        ("a2", "Beta", "y", "adv2", 0.0, "Beta | about beta"),
        ("a3", "Gamma", "x", "adv1", None, "Gamma | about gamma"),
    ], AD_COLS)


TIMELINE = [
    ("e1", "u1", "a1", "impression", 100),
    ("c1", "u1", "a1", "click", 100),  # the click of e1, in the same second
    ("q1", "u1", None, "query", 200, "running shoes"),
    ("e2", "u1", "a2", "impression", 300),
    ("e3", "u1", "a3", "impression", 300),  # same second as e2: they do not see each other
    ("c3", "u1", "a3", "click", 350),
    ("e4", "u1", "a1", "impression", 400),
    ("f1", "u2", "a1", "impression", 150),
    ("f2", "u2", "a1", "impression", 500),
    ("v2", "u2", "a1", "conversion", 90000),  # a day later: outside the 1h attribution window
]

PRIOR, STRENGTH = 0.1, 10.0


def _rate(clicks: int, imps: int) -> float:
    return (clicks + PRIOR * STRENGTH) / (imps + STRENGTH)


def _examples(spark, events, ads, **kw):
    args = dict(target_ds=[BASE.date().isoformat()], max_items=10, max_chars=500, attribution_hours=1.0,
                rate_prior=PRIOR, rate_prior_strength=STRENGTH) | kw
    return {r[S.EVENT_ID]: r for r in features.training_examples(events, ads, **args).collect()}


def test_training_examples_by_hand(spark, ads) -> None:
    ex = _examples(spark, _events(spark, TIMELINE), ads)
    assert set(ex) == {"e1", "e2", "e3", "e4", "f1", "f2"}

    e1 = ex["e1"]
    assert (e1[S.LABEL], e1[S.RELEVANCE], e1[S.HISTORY_TEXT]) == (1, 1, "")
    assert (e1["user_impressions"], e1["user_clicks"], e1["ad_impressions"], e1["ad_clicks"]) == (0, 0, 0, 0)

    e2, e3 = ex["e2"], ex["e3"]
    assert e2[S.HISTORY_TEXT] == e3[S.HISTORY_TEXT] == "searched: running shoes | clicked: Alpha"
    assert (e2[S.LABEL], e3[S.LABEL]) == (0, 1)
    assert e2["user_impressions"] == e3["user_impressions"] == 1  # e1 only, not each other
    assert e3["ad_impressions"] == 0

    e4 = ex["e4"]
    assert e4[S.HISTORY_TEXT] == "clicked: Gamma | searched: running shoes | clicked: Alpha"
    # the history's texts by kind, newest first: the clicked ads' own texts, the queries, the reviews
    assert e4[S.HISTORY_CLICK_TEXTS] == ["Gamma | about gamma", "Alpha | about alpha"]
    assert e4[S.HISTORY_SEARCH_TEXTS] == ["running shoes"] and e4[S.HISTORY_REVIEW_TEXTS] == []
    assert e1[S.HISTORY_CLICK_TEXTS] == e1[S.HISTORY_SEARCH_TEXTS] == e1[S.HISTORY_REVIEW_TEXTS] == []
    assert e2[S.HISTORY_CLICK_TEXTS] == ["Alpha | about alpha"]  # c3 came after e2
    assert (e4["user_impressions"], e4["user_clicks"]) == (3, 2)
    assert (e4["ad_impressions"], e4["ad_clicks"]) == (2, 1)  # e1 and f1; c1
    assert e4[S.USER_RATE] == pytest.approx(_rate(2, 3))
    assert e4[S.AD_RATE] == pytest.approx(_rate(1, 2))
    assert e4[S.USER_LOG_IMPRESSIONS] == pytest.approx(math.log1p(3))
    assert e4[S.LOG_PRICE] == pytest.approx(math.log1p(9.0))
    assert e4[S.CATEGORY_MATCH] == pytest.approx(1.0)  # both earlier clicks were in category x
    assert e2[S.CATEGORY_MATCH] == pytest.approx(0.0)  # a2 is category y
    assert ex["e3"][S.LOG_PRICE] == pytest.approx(0.0)  # null price

    assert ex["f2"][S.LABEL] == 0  # the conversion came after the attribution window
    assert (ex["f2"]["ad_impressions"], ex["f2"]["ad_clicks"]) == (3, 1)


def test_rates_count_at_most_one_click_per_impression(spark, ads) -> None:
    """Twelve clicks on one impression (a double-clicking user): the rates stay in [0, 1]."""
    rows = [("i1", "u9", "a2", "impression", 0)] + [(f"c{k}", "u9", "a2", "click", 1 + k) for k in range(12)]
    ex = _examples(spark, _events(spark, [*rows, ("i2", "u9", "a2", "impression", 100)]), ads)
    i2 = ex["i2"]
    assert (i2["user_impressions"], i2["user_clicks"], i2["ad_impressions"], i2["ad_clicks"]) == (1, 12, 1, 12)
    # by hand: min(12 clicks, 1 impression) = 1 click -> (1 + 0.1 * 10) / (1 + 10)
    assert i2[S.USER_RATE] == pytest.approx(2 / 11) and i2[S.AD_RATE] == pytest.approx(2 / 11)
    assert i2[S.CATEGORY_MATCH] == pytest.approx(1.0)


def test_history_budget_keeps_newest_items_whole(spark, ads) -> None:
    rows = [(f"q{i}", "u1", None, "query", 10 * i, f"query number {i}") for i in range(1, 8)]
    rows.append(("e9", "u1", "a1", "impression", 1000))
    ex = _examples(spark, _events(spark, rows), ads, max_items=3, max_chars=55)
    # 3 newest items = 78 chars > 55, two = 51: the oldest of the three is dropped whole
    assert ex["e9"][S.HISTORY_TEXT] == "searched: query number 7 | searched: query number 6"
    ex = _examples(spark, _events(spark, rows), ads, max_items=2, max_chars=10)
    assert ex["e9"][S.HISTORY_TEXT] == "searched: "  # a single item longer than the budget is cut


def test_history_texts_by_kind_follow_the_item_window(spark, ads) -> None:
    """Only the last ``max_items`` history events count; a click and a conversion on one ad give its text once;
    an empty review text is left out."""
    rows = [("c1", "u1", "a1", "click", 10), ("v1", "u1", "a1", "conversion", 20),
            ("r1", "u1", "a2", "review", 30, "great value"), ("r2", "u1", "a2", "review", 35, ""),
            ("q1", "u1", None, "query", 40, "old query"), ("q2", "u1", None, "query", 50, "new query"),
            ("e9", "u1", "a3", "impression", 100)]
    e9 = _examples(spark, _events(spark, rows), ads)["e9"]
    assert e9[S.HISTORY_CLICK_TEXTS] == ["Alpha | about alpha"]
    assert e9[S.HISTORY_REVIEW_TEXTS] == ["great value"]
    assert e9[S.HISTORY_SEARCH_TEXTS] == ["new query", "old query"]
    e9 = _examples(spark, _events(spark, rows), ads, max_items=3)["e9"]  # r2, q1, q2
    assert (e9[S.HISTORY_CLICK_TEXTS], e9[S.HISTORY_REVIEW_TEXTS]) == ([], [])
    assert e9[S.HISTORY_SEARCH_TEXTS] == ["new query", "old query"]


def test_graded_relevance_prefers_conversion(spark, ads) -> None:
    rows = [("e1", "u1", "a1", "impression", 0), ("c1", "u1", "a1", "click", 10),
            ("v1", "u1", "a1", "conversion", 20)]
    assert _examples(spark, _events(spark, rows), ads)["e1"][S.RELEVANCE] == 2


def test_no_future_event_leaks_into_features(spark, ads) -> None:
    """Rewrite everything after a cut time with random events: features of impressions before the cut must
    not move (labels may: they look ahead by design, within the attribution window)."""
    rng = random.Random(3)
    users, ad_ids = ["u1", "u2", "u3"], ["a1", "a2", "a3"]
    kinds = ["impression", "impression", "click", "query", "conversion", "review"]
    past = []
    for i in range(200):
        kind = rng.choice(kinds)
        past.append((f"p{i}", rng.choice(users), None if kind == "query" else rng.choice(ad_ids), kind,
                     rng.randrange(0, 3000), f"text {i}"))
    cut = 2500
    future = [(f"x{i}", rng.choice(users), rng.choice(ad_ids), rng.choice(["click", "impression", "review"]),
               rng.randrange(cut + 1, 9000), f"future {i}") for i in range(80)]
    kept = [r for r in past if r[4] <= cut]
    full = _examples(spark, _events(spark, kept + future), ads)
    alone = _examples(spark, _events(spark, kept), ads)
    checked = 0
    for eid, row in alone.items():
        if (row[S.EVENT_TIME] - BASE).total_seconds() > cut:
            continue
        other = full[eid]
        for col in (S.HISTORY_TEXT, *S.HISTORY_ITEM_TEXTS, *S.NUMERIC_FEATURES, *features.COUNT_COLUMNS):
            assert row[col] == other[col], (eid, col)
        checked += 1
    assert checked > 30


def test_user_profile_matches_a_training_history_after_all_events(spark, ads) -> None:
    events = _events(spark, [*TIMELINE, ("late", "u1", "a2", "impression", 86399)])
    prof = {r[S.USER_ID]: r for r in features.user_profiles(
        events, ads, as_of=BASE.date().isoformat(), max_items=10, max_chars=500).collect()}
    ex = _examples(spark, events, ads)
    assert prof["u1"][S.HISTORY_TEXT] == ex["late"][S.HISTORY_TEXT]
    assert prof["u1"]["clicked_ad_ids"] == ["a1", "a3"]
    assert prof["u1"]["recent_clicked_ad_ids"] == ["a3", "a1"]
    assert prof["u1"]["recent_queries"] == ["running shoes"]
    for col in S.HISTORY_ITEM_TEXTS:
        assert prof["u1"][col] == ex["late"][col]
    assert prof["u2"][S.HISTORY_CLICK_TEXTS] == []
    assert prof["u1"]["category_clicks"] == {"x": 2}
    assert (prof["u1"]["user_impressions"], prof["u1"]["user_clicks"]) == (5, 2)
    # u2's conversion happened the next day: not in this day's profile
    assert prof["u2"][S.HISTORY_TEXT] == "" and prof["u2"]["clicked_ad_ids"] == []


def test_profiles_ignore_events_after_the_as_of_date(spark, ads) -> None:
    events = _events(spark, [("e1", "u1", "a1", "click", 10), ("e2", "u1", "a2", "click", 86400 + 5)])
    prof = features.user_profiles(events, ads, as_of=BASE.date().isoformat(), max_items=5, max_chars=100)
    assert prof.select(S.HISTORY_TEXT).first()[0] == "clicked: Alpha"


def test_ad_snapshot_counts(spark, ads) -> None:
    snap = {r[S.AD_ID]: r for r in features.ad_snapshot(ads, _events(spark, TIMELINE),
                                                         as_of=BASE.date().isoformat()).collect()}
    assert (snap["a1"]["ad_impressions"], snap["a1"]["ad_clicks"]) == (4, 1)
    assert (snap["a2"]["ad_impressions"], snap["a2"]["ad_clicks"]) == (1, 0)
    assert snap["a3"]["ad_clicks"] == 1


def test_format_history(spark) -> None:
    df = spark.createDataFrame([(["a", "bb", "ccc"],), ([],), (None,)], "items array<string>")
    got = [r[0] for r in df.select(features.format_history(F.col("items"), 8)).collect()]
    assert got == ["a | bb", "", ""]
