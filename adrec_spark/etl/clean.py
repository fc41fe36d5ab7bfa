"""Cleaning and validation: pure ``DataFrame -> DataFrame`` transforms built from Spark's own functions.

Each raw row ends with a ``status``: ``clean``, ``rejected`` (with ``reason``) or ``duplicate``, so that
clean + rejected + duplicates = input holds by construction and can be counted in one pass.
"""

from __future__ import annotations

import datetime as dt
from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.frames import require_columns

STATUS = "status"
CLEAN, REJECTED, DUPLICATE = "clean", "rejected", "duplicate"

MAX_PAYLOAD_CHARS = 16384
# Epoch seconds accepted as event times: 1970-01-01 .. 2100-01-01
_MIN_EPOCH, _MAX_EPOCH = 0.0, 4102444800.0

# Event rejection reasons, checked in this order (a row gets the first that applies).
R_MALFORMED = "malformed_record"
R_MISSING_EVENT_ID = "missing_event_id"
R_MISSING_USER = "missing_user_id"
R_BAD_EVENT_TYPE = "unknown_event_type"
R_MISSING_TIME = "missing_event_time"
R_BAD_TIME = "unparseable_event_time"
R_FUTURE_TIME = "future_event_time"
R_MISSING_AD = "missing_ad_id"
R_UNKNOWN_AD = "unknown_ad"
R_BAD_VALUE = "bad_value"
R_MISSING_TEXT = "missing_query_text"
# Set after duplicates are marked (the impression a click follows must itself be kept)
R_CLICK_WITHOUT_IMPRESSION = "click_without_impression"
R_CONVERSION_WITHOUT_IMPRESSION = "conversion_without_impression"
# Ad catalog rejection reasons
R_MISSING_TITLE = "missing_title"
R_BAD_PRICE = "unparseable_price"
R_NEGATIVE_PRICE = "negative_price"
R_BAD_FLIGHT = "bad_flight_dates"
R_DUPLICATE_AD = "duplicate_ad_id"

# Characters that NFKC folds and that show up in scraped ad and review text. Spark 4.2 has no Unicode
# normalize(); these cover full-width ASCII, typographic quotes/dashes and odd spaces without a UDF.
_FULLWIDTH = "".join(chr(c) for c in range(0xFF01, 0xFF5F))
_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))
_TYPOGRAPHIC = "\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u2032\u2033\u2010\u2011\u2012\u2013\u2014\u2212"
_TYPOGRAPHIC_ASCII = "''''\"\"\"'\"------"
_SPACES = "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
_LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\u2026": "..."}
_HTML_ENTITIES = {"&nbsp;": " ", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'", "&apos;": "'",
                  "&#34;": '"', "&amp;": "&"}

# Personal data in free text
# Local part: RFC 5322 atext and dots. A match may start only where a run of those characters starts: without
# that look-behind, every start inside a long run rescans the run and a 100k-character word costs minutes.
_EMAIL_LOCAL = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]"
EMAIL_RE = rf"(?<!{_EMAIL_LOCAL}){_EMAIL_LOCAL}+@[A-Za-z0-9.\-]+\.[A-Za-z]{{2,}}"
CARD_RE = r"(?<![\w-])\d(?:[ \-]?\d){12,18}(?![\w-])"
PHONE_RE = (r"(?<![\w+])(?:\+\d{1,3}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]?\d{2,4}){1,4}"
            r"|\(\d{2,4}\)[ .\-]?\d{3,4}[ .\-]?\d{3,4}"
            r"|\d{3}[ .\-]\d{3,4}[ .\-]\d{4}"
            r"|\d{10,12})(?![\w-])")


def scrub_pii(col: Column) -> Column:
    """Replace e-mail addresses, card numbers and phone numbers with placeholders."""
    out = F.regexp_replace(col, EMAIL_RE, "[email]")
    out = F.regexp_replace(out, CARD_RE, "[card]")
    return F.regexp_replace(out, PHONE_RE, "[phone]")


def normalize_text(col: Column, max_chars: int) -> Column:
    """HTML stripped and unescaped, Unicode folded, personal data scrubbed, whitespace collapsed, capped.

    Empty results become null.
    """
    out = F.regexp_replace(col, r"(?is)<(script|style)[^>]*>.*?</\1\s*>", " ")
    out = F.regexp_replace(out, r"<[^>]*>", " ")
    for entity, char in _HTML_ENTITIES.items():
        out = F.regexp_replace(out, entity, char)
    out = F.regexp_replace(out, r"&#\d{1,7};|&[a-zA-Z]{2,8};", " ")
    out = F.translate(out, _FULLWIDTH + _TYPOGRAPHIC + _SPACES,
                      _ASCII + _TYPOGRAPHIC_ASCII + " " * len(_SPACES))
    for lig, rep in _LIGATURES.items():
        out = F.regexp_replace(out, lig, rep)
    out = F.regexp_replace(out, r"[\u200b-\u200d\u2060\ufeff]", "")  # zero-width characters
    out = F.regexp_replace(out, r"\p{Cc}", " ")  # control characters (tabs, newlines, NUL, ...)
    out = scrub_pii(out)
    out = F.trim(F.regexp_replace(out, r"\s+", " "))
    out = F.trim(F.substring(out, 1, max_chars))
    return F.when(F.length(out) > 0, out)


def _blank_to_null(col: Column) -> Column:
    trimmed = F.trim(col)
    return F.when(F.length(trimmed) > 0, trimmed)


def parse_event_time(col: Column) -> Column:
    """ISO-8601 (with or without zone, UTC assumed) or epoch seconds, as a timestamp; null if neither."""
    num = col.try_cast("double")
    from_epoch = F.when(num.between(_MIN_EPOCH, _MAX_EPOCH), F.timestamp_seconds(num))
    from_iso = F.try_to_timestamp(F.trim(col))
    ts = F.when(num.isNotNull(), from_epoch).otherwise(from_iso)
    return F.when(ts >= F.lit("1970-01-01").cast("timestamp"), ts)


def first_reason(checks: list[tuple[Column, str]]) -> Column:
    """The reason of the first check whose condition is true, else null."""
    return reduce(lambda acc, c: acc.when(c[0], F.lit(c[1])), checks[1:],
                  F.when(checks[0][0], F.lit(checks[0][1])))


def parse_events(raw: DataFrame, *, text_max_chars: int, max_clock_skew_minutes: int) -> DataFrame:
    """Type, normalize and validate raw events; adds ``reason`` (null when the row is usable).

    Expects the landing columns (all strings) plus ``payload``, ``malformed`` and ``ds``.
    """
    require_columns(raw, (*S.RAW_EVENT_COLUMNS, S.PAYLOAD, "malformed", S.DS), "parse_events")
    event_type = F.lower(F.trim(S.EVENT_TYPE))
    event_time = parse_event_time(F.col(S.EVENT_TIME))
    value = F.col(S.VALUE).try_cast("double")
    day_end = F.to_timestamp(F.date_add(S.DS, 1))
    latest_ok = day_end + F.make_dt_interval(F.lit(0), F.lit(0), F.lit(max_clock_skew_minutes))
    df = raw.select(
        S.DS,
        _blank_to_null(F.col(S.EVENT_ID)).alias(S.EVENT_ID),
        _blank_to_null(F.col(S.USER_ID)).alias(S.USER_ID),
        _blank_to_null(F.col(S.AD_ID)).alias(S.AD_ID),
        event_type.alias(S.EVENT_TYPE),
        event_time.alias(S.EVENT_TIME),
        normalize_text(F.col(S.TEXT), text_max_chars).alias(S.TEXT),
        value.alias(S.VALUE),
        F.col(S.VALUE).alias("_raw_value"),
        F.col(S.EVENT_TIME).alias("_raw_time"),
        F.substring(scrub_pii(F.col(S.PAYLOAD)), 1, MAX_PAYLOAD_CHARS).alias(S.PAYLOAD),
        F.col("malformed"),
        *([F.col("source_file")] if "source_file" in raw.columns else []),
    )
    reason = first_reason([
        (F.col("malformed"), R_MALFORMED),
        (F.col(S.EVENT_ID).isNull(), R_MISSING_EVENT_ID),
        (F.col(S.USER_ID).isNull(), R_MISSING_USER),
        (F.col(S.EVENT_TYPE).isNull() | ~F.col(S.EVENT_TYPE).isin(*S.EVENT_TYPES), R_BAD_EVENT_TYPE),
        (_blank_to_null(F.col("_raw_time")).isNull(), R_MISSING_TIME),
        (F.col(S.EVENT_TIME).isNull(), R_BAD_TIME),
        (F.col(S.EVENT_TIME) > latest_ok, R_FUTURE_TIME),
        (F.col(S.EVENT_TYPE).isin(*S.AD_EVENT_TYPES) & F.col(S.AD_ID).isNull(), R_MISSING_AD),
        ((_blank_to_null(F.col("_raw_value")).isNotNull() & F.col(S.VALUE).isNull())
         | F.isnan(F.coalesce(F.col(S.VALUE), F.lit(0.0)))
         | (F.col(S.VALUE) < 0) | (F.col(S.VALUE) == F.lit(float("inf"))), R_BAD_VALUE),
        ((F.col(S.EVENT_TYPE) == S.QUERY) & F.col(S.TEXT).isNull(), R_MISSING_TEXT),
    ])
    return (df.withColumn(S.REASON, reason)
            .withColumn(S.EVENT_TS, F.unix_micros(S.EVENT_TIME) / F.lit(1e6))
            .drop("_raw_value", "_raw_time"))


def reject_unknown_ads(events: DataFrame, ads: DataFrame) -> DataFrame:
    """Set ``reason = unknown_ad`` on still-valid events whose ``ad_id`` is not in the clean catalog; when
    both frames have ``ds``, the catalog of the event's own date (an ad that left the catalog later is known
    on the dates it was in it)."""
    require_columns(events, (S.AD_ID, S.REASON), "reject_unknown_ads")
    require_columns(ads, (S.AD_ID,), "reject_unknown_ads (ads)")
    by_date = S.DS in ads.columns and S.DS in events.columns
    known = ads.select(F.col(S.AD_ID).alias("_known_ad"),
                       *([F.col(S.DS).alias("_known_ds")] if by_date else [])).distinct()
    cond = events[S.AD_ID] == known["_known_ad"]
    if by_date:
        cond = cond & (events[S.DS] == known["_known_ds"])
    joined = events.join(known, cond, "left")
    unknown = F.col(S.AD_ID).isNotNull() & F.col("_known_ad").isNull() & F.col(S.REASON).isNull()
    return joined.withColumn(S.REASON, F.when(unknown, F.lit(R_UNKNOWN_AD)).otherwise(F.col(S.REASON))) \
        .drop("_known_ad", *(["_known_ds"] if by_date else []))


def mark_duplicates(events: DataFrame, seen_event_ids: DataFrame | None = None) -> DataFrame:
    """Add ``status``: rejected rows stay rejected; among usable rows, the first per ``event_id`` (by time,
    then payload, so reruns choose the same one) is clean, the rest and ids already in ``seen_event_ids``
    (events kept on earlier dates) are duplicates."""
    require_columns(events, (S.EVENT_ID, S.REASON, S.EVENT_TS, S.PAYLOAD, S.DS), "mark_duplicates")
    usable = F.col(S.REASON).isNull()
    order = Window.partitionBy(S.EVENT_ID, usable).orderBy(S.DS, S.EVENT_TS, S.PAYLOAD)
    df = events.withColumn("_rn", F.row_number().over(order))
    if seen_event_ids is not None:
        require_columns(seen_event_ids, (S.EVENT_ID,), "mark_duplicates (seen ids)")
        seen = seen_event_ids.select(F.col(S.EVENT_ID).alias("_seen_id")).distinct()
        df = df.join(seen, df[S.EVENT_ID] == seen["_seen_id"], "left")
        already = F.col("_seen_id").isNotNull()
    else:
        already = F.lit(False)
    status = (F.when(~usable, F.lit(REJECTED))
              .when((F.col("_rn") > 1) | already, F.lit(DUPLICATE))
              .otherwise(F.lit(CLEAN)))
    return df.withColumn(STATUS, status).drop("_rn", *(["_seen_id"] if seen_event_ids is not None else []))


def reject_events_without_impression(marked: DataFrame, earlier_impressions: DataFrame | None, *,
                                     attribution_hours: float, lookback_days: int) -> DataFrame:
    """Reject clean clicks and conversions that follow no impression of the same ad by the same user.

    A click or conversion at time ``t`` landed on date ``d`` is kept only when a kept impression of that
    (user, ad) is at or before ``t`` and at most ``attribution_hours`` earlier, and landed on or before ``d``
    and no more than ``lookback_days`` before it. The impression may be in ``marked`` (this run) or in
    ``earlier_impressions`` (clean impressions of earlier dates: ``ds, user_id, ad_id, event_ts``); the rule
    looks only at what a nightly run for ``d`` can see, so a backfill keeps the same events. Rejected rows get
    ``click_without_impression`` or ``conversion_without_impression``.
    """
    require_columns(marked, (STATUS, S.REASON, S.EVENT_ID, S.USER_ID, S.AD_ID, S.EVENT_TYPE, S.EVENT_TS, S.DS),
                    "reject_events_without_impression")
    cols = (S.DS, S.USER_ID, S.AD_ID, S.EVENT_TS)
    imps = marked.where((F.col(STATUS) == CLEAN) & (F.col(S.EVENT_TYPE) == S.IMPRESSION)).select(*cols)
    if earlier_impressions is not None:
        require_columns(earlier_impressions, cols, "reject_events_without_impression (earlier impressions)")
        imps = imps.unionByName(earlier_impressions.select(*cols))
    imps = imps.select(*[F.col(c).alias(f"_i_{c}") for c in cols])
    acts = marked.where((F.col(STATUS) == CLEAN) & F.col(S.EVENT_TYPE).isin(S.CLICK, S.CONVERSION)) \
        .select(S.EVENT_ID, *cols)
    window_s = float(attribution_hours) * 3600.0
    follows = ((acts[S.USER_ID] == imps[f"_i_{S.USER_ID}"]) & (acts[S.AD_ID] == imps[f"_i_{S.AD_ID}"])
               & (imps[f"_i_{S.EVENT_TS}"] <= acts[S.EVENT_TS])
               & (imps[f"_i_{S.EVENT_TS}"] >= acts[S.EVENT_TS] - F.lit(window_s))
               & (imps[f"_i_{S.DS}"] <= acts[S.DS])
               & (imps[f"_i_{S.DS}"] >= F.date_sub(acts[S.DS], lookback_days)))
    followed = acts.join(imps, follows, "left_semi").select(F.col(S.EVENT_ID).alias("_followed")).distinct()
    df = marked.join(followed, marked[S.EVENT_ID] == followed["_followed"], "left")
    orphan = ((F.col(STATUS) == CLEAN) & F.col(S.EVENT_TYPE).isin(S.CLICK, S.CONVERSION)
              & F.col("_followed").isNull())
    reason = F.when(F.col(S.EVENT_TYPE) == S.CLICK, F.lit(R_CLICK_WITHOUT_IMPRESSION)) \
        .otherwise(F.lit(R_CONVERSION_WITHOUT_IMPRESSION))
    return (df.withColumn(S.REASON, F.when(orphan, reason).otherwise(F.col(S.REASON)))
            .withColumn(STATUS, F.when(orphan, F.lit(REJECTED)).otherwise(F.col(STATUS)))
            .drop("_followed"))


def clean_event_rows(marked: DataFrame) -> DataFrame:
    """The ``events_clean`` columns of the rows marked clean."""
    require_columns(marked, (STATUS,), "clean_event_rows")
    return marked.where(F.col(STATUS) == CLEAN).select(
        S.DS, S.EVENT_ID, S.USER_ID, S.AD_ID, S.EVENT_TYPE, S.EVENT_TIME, S.EVENT_TS,
        F.to_date(S.EVENT_TIME).alias("event_date"), S.TEXT, S.VALUE)


def rejected_rows(marked: DataFrame, source: str) -> DataFrame:
    """The ``events_rejected`` columns of the rows marked rejected."""
    require_columns(marked, (STATUS, S.REASON, S.PAYLOAD, S.DS), "rejected_rows")
    file_col = F.col("source_file") if "source_file" in marked.columns else F.lit(None).cast("string")
    return marked.where(F.col(STATUS) == REJECTED).select(
        S.DS, F.lit(source).alias(S.SOURCE), S.REASON, S.PAYLOAD, file_col.alias("source_file"))


def parse_ads(raw: DataFrame, *, ds: dt.date | None, text_max_chars: int) -> DataFrame:
    """Type and validate catalog snapshots; adds ``reason``, ``status`` (first row per ad_id and date wins),
    ``ad_text`` (title | description) and the processing date ``ds`` (``None``: each row's own ``ds``, the
    date its snapshot serves, see :func:`adrec_spark.io.landing.read_ads`)."""
    require_columns(raw, (*S.RAW_AD_COLUMNS, *S.OPTIONAL_AD_COLUMNS, S.PAYLOAD, "malformed",
                          *([S.DS] if ds is None else [])), "parse_ads")
    price = F.col(S.PRICE).try_cast("double")
    start = F.try_to_date(F.trim(S.START_DATE))
    end = F.try_to_date(F.trim(S.END_DATE))
    title = normalize_text(F.col(S.TITLE), text_max_chars)
    description = normalize_text(F.col(S.DESCRIPTION), text_max_chars)
    df = raw.select(
        (F.col(S.DS) if ds is None else F.lit(ds)).cast("date").alias(S.DS),
        _blank_to_null(F.col(S.AD_ID)).alias(S.AD_ID),
        title.alias(S.TITLE),
        description.alias(S.DESCRIPTION),
        F.coalesce(F.lower(_blank_to_null(F.col(S.CATEGORY))), F.lit("unknown")).alias(S.CATEGORY),
        F.coalesce(_blank_to_null(F.col(S.ADVERTISER_ID)), F.lit("unknown")).alias(S.ADVERTISER_ID),
        price.alias(S.PRICE),
        start.alias(S.START_DATE),
        end.alias(S.END_DATE),
        F.col(S.PRICE).alias("_raw_price"),
        F.col(S.START_DATE).alias("_raw_start"),
        F.col(S.END_DATE).alias("_raw_end"),
        F.substring(scrub_pii(F.col(S.PAYLOAD)), 1, MAX_PAYLOAD_CHARS).alias(S.PAYLOAD),
        "malformed",
        *([F.col("source_file")] if "source_file" in raw.columns else []),
    )
    bad_date = ((_blank_to_null(F.col("_raw_start")).isNotNull() & F.col(S.START_DATE).isNull())
                | (_blank_to_null(F.col("_raw_end")).isNotNull() & F.col(S.END_DATE).isNull())
                | (F.col(S.END_DATE) < F.col(S.START_DATE)))
    reason = first_reason([
        (F.col("malformed"), R_MALFORMED),
        (F.col(S.AD_ID).isNull(), "missing_ad_id"),
        (F.col(S.TITLE).isNull(), R_MISSING_TITLE),
        (_blank_to_null(F.col("_raw_price")).isNotNull() & (F.col(S.PRICE).isNull() | F.isnan(S.PRICE)),
         R_BAD_PRICE),
        (F.col(S.PRICE) < 0, R_NEGATIVE_PRICE),
        (bad_date, R_BAD_FLIGHT),
    ])
    usable = reason.isNull()
    order = Window.partitionBy(S.DS, S.AD_ID, usable).orderBy(S.PAYLOAD)
    rn = F.row_number().over(order)
    df = df.withColumn(S.REASON, reason).withColumn("_rn", rn)
    df = df.withColumn(S.REASON, F.when(F.col(S.REASON).isNull() & (F.col("_rn") > 1), F.lit(R_DUPLICATE_AD))
                       .otherwise(F.col(S.REASON)))
    ad_text = F.concat_ws(" | ", F.col(S.TITLE), F.col(S.DESCRIPTION))
    return (df.withColumn(STATUS, F.when(F.col(S.REASON).isNull(), F.lit(CLEAN)).otherwise(F.lit(REJECTED)))
            .withColumn(S.AD_TEXT, ad_text)
            .drop("_rn", "_raw_price", "_raw_start", "_raw_end"))


def clean_ad_rows(parsed: DataFrame) -> DataFrame:
    require_columns(parsed, (STATUS,), "clean_ad_rows")
    return parsed.where(F.col(STATUS) == CLEAN).select(
        S.DS, S.AD_ID, S.TITLE, S.DESCRIPTION, S.CATEGORY, S.ADVERTISER_ID, S.PRICE, S.START_DATE,
        S.END_DATE, S.AD_TEXT)
