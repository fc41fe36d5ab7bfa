"""Cleaning transforms on small inline frames full of awkward rows; expected values written by hand."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.errors import MissingColumnsError
from adrec_spark.etl import clean


def _one_col(spark, values, fn):
    df = spark.createDataFrame([(v,) for v in values], "v string")
    return [r[0] for r in df.select(fn(F.col("v"))).collect()]


def test_normalize_text_html_unicode_whitespace_and_cap(spark) -> None:
    got = _one_col(spark, [
        "<p>Great&nbsp;<b>deal</b> &amp; more</p>",
        "<script>alert(1)</script>Ｆｕｌｌｗｉｄｔｈ\u00a0text",
        "zero\u200bwidth\tand\nnew\x00lines",
        "“smart” quotes — and ﬁne ligatures…",
        "   ",
        None,
        "x" * 50,
    ], lambda c: clean.normalize_text(c, 20))
    assert got == [
        "Great deal & more",
        "Fullwidth text",
        "zerowidth and new li",
        '"smart" quotes - and',
        None,
        None,
        "x" * 20,
    ]


def test_scrub_pii_replaces_contacts_and_cards_but_not_years_or_prices(spark) -> None:
    got = _one_col(spark, [
        "mail jane.doe+ads@example.co.uk now",
        "call 555-123-4567 or +44 20 7946 0958 or (020) 7946 0958",
        "card 4111 1111 1111 1111 and 4111-1111-1111-1111 and 4111111111111111",
        "in 2024, from $19.99, on 2024-01-02, model X100, 12 items",
        "ring 0123456789",
    ], clean.scrub_pii)
    assert got == [
        "mail [email] now",
        "call [phone] or [phone] or [phone]",
        "card [card] and [card] and [card]",
        "in 2024, from $19.99, on 2024-01-02, model X100, 12 items",
        "ring [phone]",
    ]


def test_parse_event_time_formats(spark) -> None:
    got = _one_col(spark, ["2024-01-02T10:00:00Z", "2024-01-02 12:00:00+02:00", "1704189600", "1704189600.5",
                           "garbage", "-5", "2024-13-01", None], clean.parse_event_time)
    ten = dt.datetime(2024, 1, 2, 10, 0)
    assert got == [ten, ten, ten, ten + dt.timedelta(seconds=0.5), None, None, None, None]


RAW_COLS = "event_id string, user_id string, ad_id string, event_type string, event_time string, " \
           "text string, value string, payload string, malformed boolean, ds date"


def _raw(spark, rows):
    """Landing-shaped rows: 7 raw fields, optionally an 8th ``malformed`` flag."""
    day = dt.date(2024, 1, 2)
    full = [(*r[:7], json.dumps(r[:7]), bool(r[7]) if len(r) > 7 else False, day) for r in rows]
    return spark.createDataFrame(full, RAW_COLS)


def test_parse_events_gives_each_bad_row_its_reason(spark) -> None:
    t = "2024-01-02T10:00:00Z"
    raw = _raw(spark, [
        ("ok", "u1", "a1", "Impression", t, None, None),
        ("q", "u1", None, "query", t, "  cheap <i>flights</i> ", None),
        (None, None, None, None, None, None, None, True),  # malformed
        ("  ", "u1", "a1", "click", t, None, None),
        ("e1", " ", "a1", "click", t, None, None),
        ("e2", "u1", "a1", "hover", t, None, None),
        ("e3", "u1", "a1", "click", "", None, None),
        ("e4", "u1", "a1", "click", "yesterday", None, None),
        ("e5", "u1", "a1", "click", "2024-01-03T00:09:00Z", None, None),  # within 10 min skew: ok
        ("e6", "u1", "a1", "click", "2024-01-03T00:11:00Z", None, None),  # future
        ("e7", "u1", None, "click", t, None, None),
        ("e8", "u1", "a1", "conversion", t, None, "abc"),
        ("e9", "u1", "a1", "conversion", t, None, "-3"),
        ("e10", "u1", None, "query", t, "<b></b>", None),
        ("e11", "u1", "a1", "conversion", t, None, "12.5"),
    ])
    out = clean.parse_events(raw, text_max_chars=100, max_clock_skew_minutes=10)
    assert out.count() == 15
    rows = {(r[S.EVENT_ID], r["malformed"]): r for r in out.collect()}
    assert rows[(None, True)][S.REASON] == "malformed_record"
    assert rows[(None, False)][S.REASON] == "missing_event_id"
    expect = {"ok": None, "q": None, "e1": "missing_user_id", "e2": "unknown_event_type",
              "e3": "missing_event_time", "e4": "unparseable_event_time", "e5": None,
              "e6": "future_event_time", "e7": "missing_ad_id", "e8": "bad_value", "e9": "bad_value",
              "e10": "missing_query_text", "e11": None}
    assert {k: rows[(k, False)][S.REASON] for k in expect} == expect
    assert rows[("ok", False)][S.EVENT_TYPE] == "impression"
    assert rows[("q", False)][S.TEXT] == "cheap flights"
    assert rows[("e11", False)][S.VALUE] == 12.5
    assert rows[("ok", False)][S.EVENT_TS] == 1704189600.0


def test_parse_events_names_missing_columns(spark) -> None:
    df = spark.createDataFrame([("x",)], "event_id string")
    with pytest.raises(MissingColumnsError, match=r"parse_events: missing column.*user_id"):
        clean.parse_events(df, text_max_chars=10, max_clock_skew_minutes=0)


def test_payload_of_rejected_rows_is_scrubbed(spark) -> None:
    raw = _raw(spark, [("e1", None, None, "query", "2024-01-02T10:00:00Z", "mail me: a.b@example.com", None)])
    row = clean.parse_events(raw, text_max_chars=100, max_clock_skew_minutes=0).first()
    assert row[S.REASON] == "missing_user_id"
    assert "example.com" not in row[S.PAYLOAD] and "[email]" in row[S.PAYLOAD]


def test_unknown_ads_and_duplicates(spark) -> None:
    t = "2024-01-02T10:00:00Z"
    raw = _raw(spark, [
        ("e1", "u1", "a1", "impression", t, None, None),
        ("e1", "u1", "a1", "impression", t, None, None),  # exact duplicate
        ("e2", "u1", "zz", "impression", t, None, None),  # unknown ad
        ("e3", "u2", None, "query", t, "shoes", None),
        ("old", "u2", "a1", "click", t, None, None),  # already kept on an earlier date
        ("e4", None, "a1", "click", t, None, None),  # rejected, not a duplicate
        ("e4", "u3", "a1", "click", t, None, None),  # the usable copy of e4 is clean
    ])
    ads = spark.createDataFrame([("a1",), ("a2",)], "ad_id string")
    seen = spark.createDataFrame([("old",)], "event_id string")
    parsed = clean.reject_unknown_ads(clean.parse_events(raw, text_max_chars=50, max_clock_skew_minutes=0), ads)
    marked = clean.mark_duplicates(parsed, seen)
    got = sorted((r[S.EVENT_ID] or "", r[clean.STATUS], r[S.REASON] or "") for r in marked.collect())
    assert got == [
        ("e1", "clean", ""), ("e1", "duplicate", ""), ("e2", "rejected", "unknown_ad"),
        ("e3", "clean", ""), ("e4", "clean", ""), ("e4", "rejected", "missing_user_id"),
        ("old", "duplicate", ""),
    ]
    assert clean.clean_event_rows(marked).count() == 3
    assert clean.rejected_rows(marked, "events").count() == 2


def test_parse_ads_validates_and_dedupes(spark) -> None:
    cols = "ad_id string, title string, description string, category string, advertiser_id string, " \
           "price string, start_date string, end_date string, payload string, malformed boolean"
    rows = [
        ("a1", "Shoes", "<b>Fast</b> shoes", " Fashion ", "adv1", "19.5", None, None),
        ("a2", "Bag", None, None, None, None, "2024-01-01", "2024-02-01"),
        ("a3", "   ", "x", "c", "adv", "1", None, None),
        ("a4", "Hat", "x", "c", "adv", "-1", None, None),
        ("a5", "Hat", "x", "c", "adv", "cheap", None, None),
        ("a6", "Hat", "x", "c", "adv", "1", "2024-02-01", "2024-01-01"),
        ("a7", "Hat", "x", "c", "adv", "1", "soon", None),
        ("a1", "Shoes again", "x", "c", "adv", "1", None, None),
        (None, "No id", "x", "c", "adv", "1", None, None),
    ]
    raw = spark.createDataFrame([(*r, json.dumps(r), False) for r in rows], cols)
    parsed = clean.parse_ads(raw, ds=dt.date(2024, 1, 2), text_max_chars=100)
    got = {(r[S.AD_ID], r[S.TITLE]): r[S.REASON] for r in parsed.collect()}
    assert got[("a3", None)] == "missing_title"
    assert got[("a4", "Hat")] == "negative_price"
    assert got[("a5", "Hat")] == "unparseable_price"
    assert got[("a6", "Hat")] == "bad_flight_dates"
    assert got[("a7", "Hat")] == "bad_flight_dates"
    assert got[(None, "No id")] == "missing_ad_id"
    assert sorted([got[("a1", "Shoes")], got[("a1", "Shoes again")]], key=str) == [None, "duplicate_ad_id"] \
        or sorted([got[("a1", "Shoes")], got[("a1", "Shoes again")]], key=str) == ["duplicate_ad_id", None]
    ok = {r[S.AD_ID]: r for r in clean.clean_ad_rows(parsed).collect()}
    assert set(ok) == {"a1", "a2"}
    assert ok["a2"][S.CATEGORY] == "unknown" and ok["a2"][S.AD_TEXT] == "Bag"
    assert ok["a2"][S.START_DATE] == dt.date(2024, 1, 1)


def test_clicks_and_conversions_without_an_earlier_impression_are_rejected(spark) -> None:
    raw = _raw(spark, [
        ("i1", "u1", "a1", "impression", "2024-01-02T10:00:00Z", None, None),
        ("c1", "u1", "a1", "click", "2024-01-02T10:00:00Z", None, None),  # same second as i1: kept
        ("c2", "u1", "a1", "click", "2024-01-02T10:30:00Z", None, None),  # a second click on i1: kept
        ("c3", "u1", "a2", "click", "2024-01-02T10:05:00Z", None, None),  # no impression of a2: rejected
        ("c4", "u2", "a1", "click", "2024-01-02T10:05:00Z", None, None),  # i1 was u1's: rejected
        ("c5", "u1", "a1", "click", "2024-01-02T09:59:00Z", None, None),  # before i1: rejected
        ("c6", "u1", "a1", "click", "2024-01-03T11:00:00Z", None, None),  # 25 h after i1 (window 24 h): rejected
        ("v1", "u1", "a1", "conversion", "2024-01-02T12:00:00Z", None, "9.5"),  # a view-through conversion: kept
        ("v2", "u1", "a3", "conversion", "2024-01-02T12:00:00Z", None, "9.5"),  # rejected
        ("c7", "u3", "a3", "click", "2024-01-02T00:30:00Z", None, None),  # impression landed the day before
        ("c8", "u3", "a2", "click", "2024-01-02T00:30:00Z", None, None),  # impression landed 3 days before
        ("x1", None, "a1", "click", "2024-01-02T10:00:00Z", None, None),  # rejected earlier: keeps its reason
    ])
    marked = clean.mark_duplicates(clean.parse_events(raw, text_max_chars=50, max_clock_skew_minutes=60 * 24))
    earlier = spark.createDataFrame([
        (dt.date(2024, 1, 1), "u3", "a3", dt.datetime(2024, 1, 1, 23, 50, tzinfo=dt.timezone.utc).timestamp()),
        (dt.date(2023, 12, 30), "u3", "a2", dt.datetime(2024, 1, 1, 23, 50, tzinfo=dt.timezone.utc).timestamp()),
    ], "ds date, user_id string, ad_id string, event_ts double")
    out = clean.reject_events_without_impression(marked, earlier, attribution_hours=24.0, lookback_days=2)
    got = {r[S.EVENT_ID]: (r[clean.STATUS], r[S.REASON]) for r in out.collect()}
    orphan, no_conv = "click_without_impression", "conversion_without_impression"
    assert got == {
        "i1": ("clean", None), "c1": ("clean", None), "c2": ("clean", None), "c3": ("rejected", orphan),
        "c4": ("rejected", orphan), "c5": ("rejected", orphan), "c6": ("rejected", orphan),
        "v1": ("clean", None), "v2": ("rejected", no_conv), "c7": ("clean", None),
        "c8": ("rejected", orphan),  # its impression landed more than lookback_days before it
        "x1": ("rejected", "missing_user_id"),
    }
