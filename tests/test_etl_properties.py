"""Property-based tests of the ETL on generated bad input, written as real JSON Lines landing files.

Each Hypothesis example is a whole batch of lines (Spark costs seconds per example, not per row): malformed
JSON, values of the wrong JSON type, huge and empty text, odd Unicode, duplicate event ids, out-of-order,
future and unparseable times in mixed formats, unknown users and ads. The transforms run on what the real
landing reader makes of the files; one property runs the whole ETL job. Expected values come from Python
(``json``, ``datetime``, ``decimal``, an RFC 5322 e-mail pattern), never from the code under test.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import re
import unicodedata
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.errors import InputDataError
from adrec_spark.etl import clean
from adrec_spark.etl.pipeline import run_etl
from adrec_spark.io import landing
from tests.conftest import make_config

DS = dt.date(2024, 1, 2)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
SKEW_MINUTES = 10
LATEST_OK = dt.datetime(2024, 1, 3, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=SKEW_MINUTES)
DS_START = dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)
MAX_EPOCH = 4102444800  # the parser's documented range of epoch seconds: 1970-01-01 .. 2100-01-01
TEXT_CAP = 40
KNOWN_ADS = ("a1", "a2", "a3")
SEEN_IDS = ("seen-1",)  # kept on an earlier date
EVENT_REASONS = frozenset({
    clean.R_MALFORMED, clean.R_MISSING_EVENT_ID, clean.R_MISSING_USER, clean.R_BAD_EVENT_TYPE,
    clean.R_MISSING_TIME, clean.R_BAD_TIME, clean.R_FUTURE_TIME, clean.R_MISSING_AD, clean.R_UNKNOWN_AD,
    clean.R_BAD_VALUE, clean.R_MISSING_TEXT, clean.R_CLICK_WITHOUT_IMPRESSION,
    clean.R_CONVERSION_WITHOUT_IMPRESSION,
})
# RFC 5322 dot-atom addresses with a dotted domain and an alphabetic top-level domain.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
EMAIL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{{2,}}",
                   re.ASCII)

PROPERTY_SETTINGS = dict(
    deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large],
)

# --- strategies -------------------------------------------------------------------------------------------

ODD_PIECES = [
    "\x00", "\x01", "\x1b[31m", "\x7f", "\t", "\u200e", "\u200f", "\u202e", "\u2066", "e\u0301", "a\u0336\u0336",
    "\u200b", "\ufeff", "😀", "👍🏽", "👨\u200d👩\u200d👧", "\u3000", "\xa0", "\u2028", "\u0085", "ﬁ", "＠", "…",
    "<b>", "</b>", "<script>x</script>", "&amp;", "&#64;", "&commat;", "555-123-4567", "4111 1111 1111 1111",
    "مرحبا", "שלום", "日本語", " ", "@", ".", "a.b@example.com",
]
odd_text = st.lists(st.one_of(st.sampled_from(ODD_PIECES), st.text(max_size=8), st.emails()), max_size=10) \
    .map("".join)
huge_text = st.sampled_from([
    "x" * 100_000, "mail a.b@example.com " * 5_000, "😀" * 100_000, "\u202e\u0301\x00 " * 25_000,
    "y" * 99_990 + " z@ex.org",
])
texts = st.one_of(st.none(), st.just(""), st.just("   "), odd_text, huge_text)
wrong_types = st.one_of(
    st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
values = st.one_of(
    st.none(), st.floats(allow_nan=False, allow_infinity=False), st.integers(-10, 10**6),
    st.sampled_from(["12.5", "-1", "abc", "NaN", "Infinity", "-Infinity", "1e400", " 3 ", "", "0x1A"]),
)


@st.composite
def event_times(draw) -> tuple[object, int | str | None]:
    """A raw event time and what it means: epoch microseconds, None (unparseable) or 'missing'."""
    kind = draw(st.sampled_from(["iso", "iso", "epoch_int", "epoch_float", "near_epoch", "garbage", "missing"]))
    if kind == "missing":
        return draw(st.sampled_from([None, "", "   "])), "missing"
    if kind == "garbage":
        raw = draw(st.one_of(
            st.sampled_from(["yesterday", "2024-13-01", "2024-01-02T25:00:00Z", "0x10", "1,5", "--", "NaN",
                             "Infinity", "-Infinity", "1e400", "-5", "2024-01-02T10:00Z", "now()", "\u0661\u0662"]),
            st.booleans(), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.none()),
        ))
        return raw, None
    if kind in ("epoch_int", "near_epoch"):
        secs = draw(st.integers(-10**9, 5 * 10**9) if kind == "epoch_int" else
                    st.integers(int(DS_START.timestamp()) - 3 * 86400, int(DS_START.timestamp()) + 2 * 86400))
        raw = draw(st.sampled_from([secs, str(secs), f"  {secs} "]))
        return raw, (secs * 10**6 if 0 <= secs <= MAX_EPOCH else None)
    if kind == "epoch_float":
        secs = Decimal(draw(st.integers(-10**12, 5 * 10**12))) / 1000
        raw = draw(st.sampled_from([float(secs), str(secs)]))
        return raw, (int(secs * 10**6) if 0 <= secs <= MAX_EPOCH else None)
    # ISO-8601: 'T' or ' ', optional fraction, 'Z', an offset or no zone (UTC); around the landing day or far
    local = draw(st.one_of(
        st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1)),
        st.integers(-3 * 86400 * 10**6, 2 * 86400 * 10**6).map(
            lambda us: DS_START.replace(tzinfo=None) + dt.timedelta(microseconds=us)),
    ))
    offset = draw(st.sampled_from([None, "Z", *range(-12 * 60, 14 * 60 + 1, 45)]))
    digits = draw(st.integers(0, 6))
    frac = f".{local.microsecond:06d}"[: digits + 1] if digits else ""
    local = local.replace(microsecond=int(frac[1:].ljust(6, "0")) if digits else 0)
    if offset in (None, "Z"):
        zone, tz = ("" if offset is None else "Z"), dt.timezone.utc
    else:
        zone = f"{'+' if offset >= 0 else '-'}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
        tz = dt.timezone(dt.timedelta(minutes=offset))
    sep = draw(st.sampled_from(["T", " "]))
    raw = f"{local:%Y-%m-%d}{sep}{local:%H:%M:%S}{frac}{zone}"
    us = (local.replace(tzinfo=tz) - EPOCH) // dt.timedelta(microseconds=1)
    return draw(st.sampled_from([raw, f" {raw}  "])), (us if us >= 0 else None)


raw_times = event_times().map(lambda t: t[0])
event_ids = st.one_of(st.sampled_from(["e1", "e2", "e3", *SEEN_IDS]), st.text(max_size=12))
user_ids = st.one_of(st.sampled_from(["u1", "u2", " u3 ", "nobody-knows-me", "\u202eu4"]), st.text(max_size=12))
event_types = st.one_of(st.sampled_from([*S.EVENT_TYPES, " Click ", "QUERY", "hover", "\tquery"]),
                        st.text(max_size=8))
ad_ids = st.one_of(st.sampled_from([*KNOWN_ADS, "zz", "", " a1 "]), st.none())

# Plausible records (mostly valid fields, so that many rows get through to the clean checks) and wild ones
# (any field of any JSON type, any field missing).
plausible_record = st.fixed_dictionaries(
    {S.EVENT_ID: event_ids, S.USER_ID: user_ids, S.EVENT_TYPE: event_types, S.EVENT_TIME: raw_times},
    optional={S.AD_ID: ad_ids, S.TEXT: texts, S.VALUE: values, "extra": wrong_types},
)
wild_record = st.fixed_dictionaries({}, optional={
    S.EVENT_ID: st.one_of(event_ids, wrong_types), S.USER_ID: st.one_of(user_ids, wrong_types),
    S.AD_ID: st.one_of(ad_ids, wrong_types), S.EVENT_TYPE: st.one_of(event_types, wrong_types),
    S.EVENT_TIME: st.one_of(raw_times, wrong_types), S.TEXT: st.one_of(texts, wrong_types),
    S.VALUE: st.one_of(values, wrong_types),
})


def _dumps(record: dict, ascii_only: bool) -> str:
    return json.dumps(record, ensure_ascii=ascii_only, allow_nan=False)


record_lines = st.builds(_dumps, st.one_of(plausible_record, plausible_record, wild_record), st.booleans())
truncated_lines = st.builds(lambda line, cut: line[: max(1, int(len(line) * cut))], record_lines,
                            st.floats(0.0, 0.99))
non_object_lines = st.one_of(st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=5), st.none(),
                             st.booleans()).map(json.dumps)
garbage_lines = st.text(st.characters(exclude_characters="\n\r{"), min_size=1, max_size=40) \
    .filter(lambda s: s.strip(" \t") != "")
blank_lines = st.sampled_from(["", " ", "   ", "\t", " \t "])
tab_indented = st.builds(lambda line: "\t " + line, record_lines)
lines = st.one_of(record_lines, record_lines, record_lines, tab_indented, truncated_lines, non_object_lines,
                  garbage_lines, blank_lines)


@st.composite
def batches(draw, *, at_least_one_row: bool = False) -> list[str]:
    """A landing file's lines, some repeated verbatim (exact duplicates), in any order."""
    out = draw(st.lists(lines, min_size=1, max_size=40))
    for i in draw(st.lists(st.integers(0, len(out) - 1), max_size=4)):
        out.append(out[i])
    if at_least_one_row and not any(_is_row(line) for line in out):
        out.append(draw(record_lines))
    return draw(st.permutations(out))


# --- reference --------------------------------------------------------------------------------------------


def _is_row(line: str) -> bool:
    """Whitespace-only lines (JSON whitespace; a line holds no CR/LF) are not records."""
    return line.strip(" \t") != ""


def _is_malformed(line: str) -> bool:
    try:
        return not isinstance(json.loads(line), dict)
    except ValueError:
        return True


_counter = itertools.count()


def _write_landing(root: Path, batch: list[str]) -> Path:
    """A fresh ``<case>/raw/events/date=<DS>/events-0.jsonl`` under ``root`` (one per example); the case."""
    case = root / f"case{next(_counter)}"
    folder = _events_folder(case)
    folder.mkdir(parents=True)
    (folder / "events-0.jsonl").write_text("".join(line + "\n" for line in batch), encoding="utf-8")
    return case


def _events_folder(case: Path) -> Path:
    return case / "raw" / "events" / f"date={DS.isoformat()}"


def _marked(spark, case: Path):
    raw = landing.read_raw(spark, [str(_events_folder(case))], "json", S.RAW_EVENT_COLUMNS)
    parsed = clean.parse_events(raw, text_max_chars=TEXT_CAP, max_clock_skew_minutes=SKEW_MINUTES)
    ads = spark.createDataFrame([(a,) for a in KNOWN_ADS], "ad_id string")
    seen = spark.createDataFrame([(i,) for i in SEEN_IDS], "event_id string")
    return clean.mark_duplicates(clean.reject_unknown_ads(parsed, ads), seen)


def out_columns() -> list:
    return [clean.STATUS, S.REASON, S.EVENT_ID, S.USER_ID, S.AD_ID, S.EVENT_TYPE, S.TEXT, S.VALUE, "malformed",
            F.unix_micros(S.EVENT_TIME).alias("time_us")]


def check_clean_row(row) -> None:
    """What every clean event satisfies, whatever came in."""
    where = f"clean row {row.asDict()!r:.300}"
    assert None not in (row[S.EVENT_ID], row[S.USER_ID], row[S.EVENT_TYPE], row["time_us"]), where
    assert row[S.EVENT_TYPE] in S.EVENT_TYPES, where
    assert 0 <= row["time_us"] <= (LATEST_OK - EPOCH) // dt.timedelta(microseconds=1), where
    if row[S.EVENT_TYPE] in S.AD_EVENT_TYPES or row[S.AD_ID] is not None:
        assert row[S.AD_ID] in KNOWN_ADS, where
    text = row[S.TEXT]
    if row[S.EVENT_TYPE] == S.QUERY:
        assert text is not None, where
    if text is not None:
        assert 0 < len(text) <= TEXT_CAP, where
        assert text == text.strip(" "), where
        assert not EMAIL.search(text), where
        assert not any(unicodedata.category(c) == "Cc" for c in text), where
    if row[S.VALUE] is not None:
        assert math.isfinite(row[S.VALUE]) and row[S.VALUE] >= 0, where


def check_statuses(rows, batch: list[str]) -> None:
    """Accounting, reasons and duplicates over one batch's marked rows."""
    inputs = [line for line in batch if _is_row(line)]
    by_status = Counter(r[clean.STATUS] for r in rows)
    assert set(by_status) <= {clean.CLEAN, clean.REJECTED, clean.DUPLICATE}
    assert by_status[clean.CLEAN] + by_status[clean.REJECTED] + by_status[clean.DUPLICATE] == len(inputs)
    for r in rows:
        if r[clean.STATUS] == clean.REJECTED:
            assert r[S.REASON] in EVENT_REASONS, r.asDict()
        else:
            assert r[S.REASON] is None, r.asDict()
    malformed = [r for r in rows if r[S.REASON] == clean.R_MALFORMED]
    assert len(malformed) == sum(_is_malformed(line) for line in inputs)
    kept = [r[S.EVENT_ID] for r in rows if r[clean.STATUS] == clean.CLEAN]
    assert len(kept) == len(set(kept)) and not set(kept) & set(SEEN_IDS)
    assert {r[S.EVENT_ID] for r in rows if r[clean.STATUS] == clean.DUPLICATE} <= {*kept, *SEEN_IDS}
    for r in rows:
        if r[clean.STATUS] == clean.CLEAN:
            check_clean_row(r)


# --- properties -------------------------------------------------------------------------------------------


# Minimal inputs of the bugs these properties found (fixed in io/landing.py and etl/clean.py): a tab-only line
# and a tab-indented object were malformed rows, an infinite value was clean, an address ending in '{' before
# the '@' survived scrubbing, and a 100k-letter word took minutes (the e-mail pattern was quadratic).
KNOWN_BAD = [
    "\t",
    '\t{"event_id": "tab", "user_id": "u", "event_type": "query", "event_time": "1704189600", "text": "hi"}',
    '{"event_id": "inf", "user_id": "u", "ad_id": "a1", "event_type": "conversion", '
    '"event_time": "2024-01-02T10:00:00Z", "value": "Infinity"}',
    '{"event_id": "mail", "user_id": "u", "event_type": "query", "event_time": "2024-01-02T10:00:00Z", '
    '"text": "hQ{@CR70.gMail"}',
    '{"event_id": "long", "user_id": "u", "event_type": "query", "event_time": "2024-01-02T10:00:00Z", '
    '"text": "' + "x" * 100_000 + '"}',
]


@settings(max_examples=12, **PROPERTY_SETTINGS)
@given(batch=batches())
@example(batch=KNOWN_BAD)
def test_transforms_account_for_every_line(spark, tmp_path, batch) -> None:
    """parse -> unknown ads -> duplicates on whatever the landing reader makes of a bad file: no crash, each
    non-blank line ends clean, rejected (with a known reason) or duplicate, and clean rows are usable."""
    rows = _marked(spark, _write_landing(tmp_path, batch)).select(*out_columns()).collect()
    check_statuses(rows, batch)


@st.composite
def timed_batches(draw) -> list[tuple[str, object, int | str | None]]:
    """Valid reviews of known ads with unique ids, odd text and any event time: (line, raw time, meaning)."""
    cases = draw(st.lists(event_times(), min_size=1, max_size=40))
    out = []
    for i, (raw, meaning) in enumerate(cases):
        record = {S.EVENT_ID: f"t{i}", S.USER_ID: f"u{i % 3}", S.AD_ID: KNOWN_ADS[i % 3],
                  S.EVENT_TYPE: S.REVIEW, S.EVENT_TIME: raw, S.TEXT: draw(texts)}
        out.append((_dumps(record, draw(st.booleans())), raw, meaning))
    return draw(st.permutations(out))


@settings(max_examples=12, **PROPERTY_SETTINGS)
@given(cases=timed_batches())
def test_event_times_in_mixed_formats_parse_to_utc(spark, tmp_path, cases) -> None:
    """Epoch seconds (numbers or strings, integral or not), ISO-8601 with 'Z', an offset or no zone (UTC):
    the clean time equals the one Python computes; the rest are missing, unparseable or future."""
    case = _write_landing(tmp_path, [line for line, _, _ in cases])
    rows = {r[S.EVENT_ID]: r for r in _marked(spark, case).select(*out_columns()).collect()}
    assert len(rows) == len(cases)
    latest = (LATEST_OK - EPOCH) // dt.timedelta(microseconds=1)
    for line, raw, meaning in cases:
        r = rows[json.loads(line)[S.EVENT_ID]]
        where = f"event_time {raw!r} -> {r.asDict()!r:.300}"
        if meaning == "missing":
            assert r[S.REASON] == clean.R_MISSING_TIME, where
        elif meaning is None:
            assert r[S.REASON] == clean.R_BAD_TIME, where
        elif meaning > latest:
            assert r[S.REASON] == clean.R_FUTURE_TIME, where
        else:
            assert r[clean.STATUS] == clean.CLEAN, where
            assert abs(r["time_us"] - meaning) <= 2, where  # doubles carry epoch seconds to about 1 us
            check_clean_row(r)


def _write_catalog(case: Path) -> None:
    folder = case / "raw" / "ads" / "date=2024-01-01"
    folder.mkdir(parents=True)
    ads = [{S.AD_ID: a, S.TITLE: f"Ad {a}", S.DESCRIPTION: "A fine ad", S.CATEGORY: "books",
            S.ADVERTISER_ID: "adv1", S.PRICE: 10 + i} for i, a in enumerate(KNOWN_ADS)]
    (folder / "ads-0.jsonl").write_text("".join(json.dumps(a) + "\n" for a in ads))


@settings(max_examples=4, **PROPERTY_SETTINGS)
@given(batch=batches(at_least_one_row=True))  # an all-blank file is an error: see the test below
def test_etl_job_accounts_for_every_line(spark, tmp_path, batch) -> None:
    """The whole job on a bad landing file and a real catalog: no crash; its metrics, events_clean,
    events_rejected and etl_runs agree with each other and with the input lines."""
    case = _write_landing(tmp_path, batch)
    _write_catalog(case)
    cfg = make_config(case, f"etl.text_max_chars={TEXT_CAP}", f"etl.max_clock_skew_minutes={SKEW_MINUTES}",
                      "etl.on_rejected_excess=warn")  # a batch of bad lines is mostly rejected by design
    result = run_etl(spark, cfg, DS)

    inputs = [line for line in batch if _is_row(line)]
    day = result.days[DS.isoformat()]
    assert result.dates == [DS.isoformat()]
    assert day.input_rows == len(inputs) == day.clean_rows + day.rejected_rows + day.duplicate_rows
    read = spark.read.format("delta").load
    clean_rows = read(cfg.storage.table_path(S.EVENTS_CLEAN)).withColumn(clean.STATUS, F.lit(clean.CLEAN)) \
        .withColumn(S.REASON, F.lit(None).cast("string")).withColumn("malformed", F.lit(False)) \
        .select(*out_columns()).collect()
    assert len(clean_rows) == day.clean_rows
    for r in clean_rows:
        check_clean_row(r)
    assert len({r[S.EVENT_ID] for r in clean_rows}) == len(clean_rows)
    rejected = read(cfg.storage.table_path(S.EVENTS_REJECTED)).where(F.col(S.SOURCE) == "events") \
        .select(S.REASON, S.PAYLOAD).collect()
    reasons = Counter(r[S.REASON] for r in rejected)
    assert reasons == Counter(day.rejected_by_reason) and sum(reasons.values()) == day.rejected_rows
    assert set(reasons) <= EVENT_REASONS
    assert reasons[clean.R_MALFORMED] == sum(_is_malformed(line) for line in inputs)
    assert all(r[S.PAYLOAD] for r in rejected)
    run = read(cfg.storage.table_path(S.ETL_RUNS)).first()
    assert (run["input_rows"], run["clean_rows"], run["rejected_rows"], run["duplicate_rows"]) == \
        (len(inputs), day.clean_rows, day.rejected_rows, day.duplicate_rows)
    impressions = sum(r[S.EVENT_TYPE] == S.IMPRESSION for r in clean_rows)
    assert read(cfg.storage.table_path(S.TRAINING_EXAMPLES)).count() == impressions == result.training_examples


ATTRIBUTION_HOURS = 1.0
DAY2 = DS + dt.timedelta(days=1)


@st.composite
def click_logs(draw) -> list[tuple[dt.date, dict]]:
    """(landing date, record): impressions, clicks and conversions of three users on three ads over two
    days, in any order, many clicks and conversions with no impression before them, some landing a day late."""
    n = draw(st.integers(1, 40))
    out = []
    for i in range(n):
        kind = draw(st.sampled_from([S.IMPRESSION, S.IMPRESSION, S.CLICK, S.CLICK, S.CONVERSION]))
        sec = draw(st.integers(0, 2 * 86400 - 1))
        t = DS_START + dt.timedelta(seconds=sec)
        day = t.date() if t.date() == DAY2 else draw(st.sampled_from([DS, DAY2]))  # late or on time
        record = {S.EVENT_ID: f"k{i}", S.USER_ID: draw(st.sampled_from(["u0", "u1", "u2"])),
                  S.AD_ID: draw(st.sampled_from(KNOWN_ADS)), S.EVENT_TYPE: kind,
                  S.EVENT_TIME: t.strftime("%Y-%m-%dT%H:%M:%SZ")}
        out.append((day, record))
    # a burst of clicks right after one impression: more clicks than impressions for that user and ad
    base = DS_START + dt.timedelta(hours=3)
    out.append((DS, {S.EVENT_ID: "burst-i", S.USER_ID: "u0", S.AD_ID: "a1", S.EVENT_TYPE: S.IMPRESSION,
                     S.EVENT_TIME: base.strftime("%Y-%m-%dT%H:%M:%SZ")}))
    out += [(DS, {S.EVENT_ID: f"burst-c{k}", S.USER_ID: "u0", S.AD_ID: "a1", S.EVENT_TYPE: S.CLICK,
                  S.EVENT_TIME: (base + dt.timedelta(seconds=k)).strftime("%Y-%m-%dT%H:%M:%SZ")})
            for k in range(12)]
    out.append((DS, {S.EVENT_ID: "burst-j", S.USER_ID: "u0", S.AD_ID: "a1", S.EVENT_TYPE: S.IMPRESSION,
                     S.EVENT_TIME: (base + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")}))
    return draw(st.permutations(out))


def _in_unit_interval(rows, columns) -> None:
    for r in rows:
        for c in columns:
            assert r[c] is not None and 0.0 <= r[c] <= 1.0, (c, r.asDict())


@settings(max_examples=3, **PROPERTY_SETTINGS)
@given(log=click_logs())
def test_rates_stay_in_unit_interval_and_every_kept_click_follows_an_impression(spark, tmp_path, log) -> None:
    """On arbitrary logs with orphan clicks and conversions: each kept click or conversion follows a kept
    impression of the same user and ad within the attribution window (landed on its date or before); each
    one rejected as without impression has none; every rate in training_examples, and every rate the
    scoring job computes from user_profiles and ads, is in [0, 1]."""
    from adrec_spark.etl import features

    case = tmp_path / f"clicks{next(_counter)}"
    for day in (DS, DAY2):
        folder = case / "raw" / "events" / f"date={day.isoformat()}"
        folder.mkdir(parents=True)
        rows = [json.dumps(r) + "\n" for d, r in log if d == day]
        (folder / "events-0.jsonl").write_text("".join(rows) or json.dumps(
            {S.EVENT_ID: f"q-{day}", S.USER_ID: "u0", S.EVENT_TYPE: S.QUERY, S.TEXT: "hi",
             S.EVENT_TIME: f"{day.isoformat()}T00:00:00Z"}) + "\n")
    _write_catalog(case)
    cfg = make_config(case, f"etl.attribution_hours={ATTRIBUTION_HOURS}", "etl.on_rejected_excess=warn")
    run_etl(spark, cfg, DS, DAY2)
    read = spark.read.format("delta").load
    kept = read(cfg.storage.table_path(S.EVENTS_CLEAN)).select(S.DS, S.EVENT_ID, S.USER_ID, S.AD_ID,
                                                                 S.EVENT_TYPE, S.EVENT_TS).collect()
    imps = [r for r in kept if r[S.EVENT_TYPE] == S.IMPRESSION]

    def follows(r) -> bool:
        return any(i[S.USER_ID] == r[S.USER_ID] and i[S.AD_ID] == r[S.AD_ID] and i[S.DS] <= r[S.DS]
                   and 0 <= r[S.EVENT_TS] - i[S.EVENT_TS] <= ATTRIBUTION_HOURS * 3600 for i in imps)

    for r in kept:
        if r[S.EVENT_TYPE] in (S.CLICK, S.CONVERSION):
            assert follows(r), r.asDict()
    by_id = {r[S.EVENT_ID]: (d, r) for d, r in log}
    orphans = read(cfg.storage.table_path(S.EVENTS_REJECTED)).where(F.col(S.REASON).isin(
        clean.R_CLICK_WITHOUT_IMPRESSION, clean.R_CONVERSION_WITHOUT_IMPRESSION)).collect()
    for o in orphans:
        day, rec = by_id[json.loads(o[S.PAYLOAD])[S.EVENT_ID]]
        ts = dt.datetime.strptime(rec[S.EVENT_TIME], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
        probe = {S.USER_ID: rec[S.USER_ID], S.AD_ID: rec[S.AD_ID], S.DS: day, S.EVENT_TS: ts.timestamp()}
        assert not follows(probe), rec

    examples = read(cfg.storage.table_path(S.TRAINING_EXAMPLES)).collect()
    _in_unit_interval(examples, (S.USER_RATE, S.AD_RATE, S.CATEGORY_MATCH))
    assert all(r[S.LABEL] in (0, 1) for r in examples)
    kw = dict(rate_prior=cfg.etl.rate_prior, rate_prior_strength=cfg.etl.rate_prior_strength)
    users = read(cfg.storage.table_path(S.USER_PROFILES)).select(*features.numeric_features(
        user_impressions=F.col(features.USER_IMPRESSIONS), user_clicks=F.col(features.USER_CLICKS),
        ad_impressions=F.lit(0), ad_clicks=F.lit(0), price=F.lit(0.0), category_clicks=F.lit(0), **kw))
    ads = read(cfg.storage.table_path(S.ADS)).select(*features.numeric_features(
        user_impressions=F.lit(0), user_clicks=F.lit(0), ad_impressions=F.col(features.AD_IMPRESSIONS),
        ad_clicks=F.col(features.AD_CLICKS), price=F.col(S.PRICE), category_clicks=F.lit(0), **kw))
    _in_unit_interval(users.collect(), (S.USER_RATE,))
    _in_unit_interval(ads.collect(), (S.AD_RATE,))


# --- bugs the properties found, pinned as examples ----------------------------------------------------------


def test_landing_file_of_blank_lines_is_a_clear_error(spark, tmp_path) -> None:
    case = _write_landing(tmp_path, ["", "  "])
    _write_catalog(case)
    with pytest.raises(InputDataError, match="no events"):
        run_etl(spark, make_config(case), DS)


def test_blank_and_tab_indented_lines(spark, tmp_path) -> None:
    """A tab-only line is blank, a tab-indented object is a record (both were malformed rows before)."""
    line = json.dumps({S.EVENT_ID: "e", S.USER_ID: "u", S.EVENT_TYPE: "query", S.EVENT_TIME: "1704189600",
                       S.TEXT: "hi"})
    rows = _marked(spark, _write_landing(tmp_path, ["\t", " \t ", "\t" + line])).select(*out_columns()).collect()
    assert [(r[clean.STATUS], r[S.EVENT_ID], r[S.TEXT]) for r in rows] == [(clean.CLEAN, "e", "hi")]


def test_infinite_and_unusual_email_values(spark, tmp_path) -> None:
    """An infinite value is bad (it was kept as inf); an address whose local part ends in an RFC 5322
    character outside [A-Za-z0-9._%+-] is scrubbed (it was kept)."""
    base = {S.USER_ID: "u", S.AD_ID: "a1", S.EVENT_TIME: "2024-01-02T10:00:00Z"}
    batch = [json.dumps({**base, S.EVENT_ID: f"v{i}", S.EVENT_TYPE: S.CONVERSION, S.VALUE: v})
             for i, v in enumerate(["Infinity", "1e400", "-Infinity", 12.5])]
    batch += [json.dumps({**base, S.EVENT_ID: f"m{i}", S.EVENT_TYPE: S.QUERY, S.TEXT: f"write {t} now"})
              for i, t in enumerate(["hQ{@CR70.gMail", "a!@b.co", "x/y=z@ex.org", "plain a.b@example.com"])]
    rows = {r[S.EVENT_ID]: r for r in _marked(spark, _write_landing(tmp_path, batch)).select(*out_columns()).collect()}
    assert [rows[f"v{i}"][S.REASON] for i in range(4)] == [clean.R_BAD_VALUE] * 3 + [None]
    assert [rows[f"m{i}"][S.TEXT] for i in range(4)] == ["write [email] now"] * 3 + ["write plain [email] now"]
