"""Point-in-time features: pure transforms over clean events and the ad catalog.

For an impression at time ``t`` every feature uses only events strictly before ``t`` (events in the same
microsecond do not see each other). The history text is the user's last ``max_items`` history events
(clicks, conversions, queries, reviews) before ``t``, newest first, cut to a character budget.

How the history stays linear in the input: history events get a per-user index ``r`` (1, 2, ...); an
impression needs the "state" ``c`` = number of history events before it, and its text is made of the
events with ``r`` in ``(c - max_items, c]``. Each history event is copied into the ``max_items`` states
that contain it, so building all states costs ``O(history events * max_items)``; impressions then join
their state by ``(user, c)``.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import MapType

from adrec_spark import schema as S
from adrec_spark.frames import require_columns

TS_US = "ts_us"
STATE = "history_state"
USER_IMPRESSIONS = "user_impressions"
USER_CLICKS = "user_clicks"
AD_IMPRESSIONS = "ad_impressions"
AD_CLICKS = "ad_clicks"
CATEGORY_CLICKS = "category_clicks"  # user's clicks in the ad's category (training) / map (profiles)
HISTORY_ITEM = "history_item"
ITEM_TEXT = "item_text"  # what the text-similarity features embed of a history event (see history_items)

COUNT_COLUMNS = (USER_IMPRESSIONS, USER_CLICKS, AD_IMPRESSIONS, AD_CLICKS)

_EVENT_COLUMNS = (S.EVENT_ID, S.USER_ID, S.AD_ID, S.EVENT_TYPE, S.EVENT_TIME, S.TEXT)
_AD_COLUMNS = (S.AD_ID, S.TITLE, S.CATEGORY, S.ADVERTISER_ID, S.PRICE, S.AD_TEXT)


def numeric_features(*, user_impressions: Column, user_clicks: Column, ad_impressions: Column,
                     ad_clicks: Column, price: Column, category_clicks: Column, rate_prior: float,
                     rate_prior_strength: float) -> list[Column]:
    """The model's numeric inputs (``schema.NUMERIC_FEATURES`` order) from raw counts.

    One function for training examples and for scoring, so both see the same transformation.
    Rates are smoothed towards ``rate_prior`` with ``rate_prior_strength`` pseudo-impressions and count at
    most as many clicks as impressions (several clicks on one impression, or a click whose impression fell
    just outside the look-back window, never push a rate above 1).
    """
    ui, uc = F.coalesce(user_impressions, F.lit(0)), F.coalesce(user_clicks, F.lit(0))
    ai, ac = F.coalesce(ad_impressions, F.lit(0)), F.coalesce(ad_clicks, F.lit(0))
    prior = F.lit(rate_prior * rate_prior_strength)
    strength = F.lit(rate_prior_strength)
    cat = F.coalesce(category_clicks, F.lit(0))
    cols = {
        S.USER_RATE: (F.least(uc, ui) + prior) / (ui + strength),
        S.USER_LOG_IMPRESSIONS: F.log1p(ui),
        S.AD_RATE: (F.least(ac, ai) + prior) / (ai + strength),
        S.AD_LOG_IMPRESSIONS: F.log1p(ai),
        S.LOG_PRICE: F.log1p(F.greatest(F.coalesce(price, F.lit(0.0)), F.lit(0.0))),
        S.CATEGORY_MATCH: F.when(uc > 0, cat / uc).otherwise(F.lit(0.0)),
    }
    return [cols[name].cast("float").alias(name) for name in S.NUMERIC_FEATURES]


def format_history(items_newest_first: Column, max_chars: int) -> Column:
    """Join history items with `` | `` and cut to ``max_chars`` at an item boundary."""
    joined = F.coalesce(F.array_join(items_newest_first, " | "), F.lit(""))
    cut = F.substring(joined, 1, max_chars)
    # Drop a trailing partial item; keep the hard cut when the newest item alone is too long.
    at_boundary = F.regexp_replace(cut, r" \|( [^|]*)?$", "")
    return F.when(F.length(joined) <= max_chars, joined).otherwise(at_boundary)


def with_content_hash(df: DataFrame, *, exclude: tuple[str, ...] = (S.DS,)) -> DataFrame:
    """``df`` plus ``content_hash``: SHA-256 of every other column but ``exclude`` (the date: a row is compared
    with its own earlier snapshot). Incremental scoring compares it between two dates to find what changed.

    The whole row is hashed, not a chosen list of columns, so a column the scoring job starts to read later
    can never be missed (a column it does not read only costs a rescore). Maps are hashed with their entries
    sorted by key (``collect_list`` builds them in no fixed order); arrays keep their order, which means
    something (newest first)."""
    cols = sorted(c for c in df.columns if c not in exclude and c != S.CONTENT_HASH)  # not the column order
    if not cols:
        raise ValueError("with_content_hash: no columns left to hash")
    types = {f.name: f.dataType for f in df.schema.fields}
    canon = [F.array_sort(F.map_entries(c)).alias(c) if isinstance(types[c], MapType) else F.col(c) for c in cols]
    return df.withColumn(S.CONTENT_HASH, F.sha2(F.to_json(F.struct(*canon)), 256))


def with_event_micros(events: DataFrame) -> DataFrame:
    require_columns(events, (S.EVENT_TIME,), "with_event_micros")
    return events.withColumn(TS_US, F.unix_micros(S.EVENT_TIME))


def history_items(events: DataFrame, ads: DataFrame) -> DataFrame:
    """History events as text items: ``clicked: <title>``, ``bought: <title>``, ``searched: <query>``,
    ``reviewed <title>: <text>``; with ``ts_us`` and a per-user index ``r`` in time order.

    ``item_text`` is what the text-similarity features embed of the event: the clicked (or bought) ad's own
    ``ad_text`` (null for an ad missing from the catalog), the query, the review text."""
    require_columns(events, (*_EVENT_COLUMNS, TS_US), "history_items")
    require_columns(ads, (S.AD_ID, S.TITLE, S.AD_TEXT), "history_items (ads)")
    titles = ads.select(S.AD_ID, F.col(S.TITLE).alias("_title"), F.col(S.AD_TEXT).alias("_ad_text"))
    h = (events.where(F.col(S.EVENT_TYPE).isin(*S.HISTORY_EVENT_TYPES))
         .join(titles, S.AD_ID, "left"))
    title = F.coalesce(F.col("_title"), F.lit("an ad"))
    item = (F.when(F.col(S.EVENT_TYPE) == S.CLICK, F.concat(F.lit("clicked: "), title))
            .when(F.col(S.EVENT_TYPE) == S.CONVERSION, F.concat(F.lit("bought: "), title))
            .when(F.col(S.EVENT_TYPE) == S.QUERY, F.concat(F.lit("searched: "), F.col(S.TEXT)))
            .otherwise(F.concat(F.lit("reviewed "), title, F.lit(": "),
                                F.coalesce(F.substring(S.TEXT, 1, 200), F.lit("")))))
    item_text = F.when(F.col(S.EVENT_TYPE).isin(S.CLICK, S.CONVERSION), F.col("_ad_text")).otherwise(F.col(S.TEXT))
    order = Window.partitionBy(S.USER_ID).orderBy(TS_US, S.EVENT_ID)
    return h.select(S.USER_ID, TS_US, S.EVENT_ID, S.EVENT_TYPE, S.AD_ID, item.alias(HISTORY_ITEM),
                    item_text.alias(ITEM_TEXT)) \
        .withColumn("r", F.row_number().over(order))


def item_texts(items_newest_first: Column) -> list[Column]:
    """The history's texts by kind (``schema.HISTORY_ITEM_TEXTS`` order), newest first, from an array of
    structs with ``event_type`` and ``item_text``: the distinct clicked or bought ads' texts, the queries, the
    review texts; empty texts left out."""
    def of(*kinds: str) -> Column:
        kept = F.filter(items_newest_first, lambda x: x[S.EVENT_TYPE].isin(*kinds) & (F.length(x[ITEM_TEXT]) > 0))
        return F.coalesce(F.transform(kept, lambda x: x[ITEM_TEXT]), F.array().cast("array<string>"))

    cols = {S.HISTORY_CLICK_TEXTS: F.array_distinct(of(S.CLICK, S.CONVERSION)),
            S.HISTORY_SEARCH_TEXTS: of(S.QUERY), S.HISTORY_REVIEW_TEXTS: of(S.REVIEW)}
    return [cols[c].alias(c) for c in S.HISTORY_ITEM_TEXTS]


def history_states(items: DataFrame, needed: DataFrame, *, max_items: int, max_chars: int) -> DataFrame:
    """History text, and the history's texts by kind (:func:`item_texts`), for each ``(user_id,
    history_state)`` in ``needed`` (states > 0)."""
    require_columns(items, (S.USER_ID, "r", HISTORY_ITEM, S.EVENT_TYPE, ITEM_TEXT), "history_states")
    require_columns(needed, (S.USER_ID, STATE), "history_states (needed)")
    copies = (items.select(S.USER_ID, "r", HISTORY_ITEM, S.EVENT_TYPE, ITEM_TEXT,
                           F.explode(F.sequence(F.lit(0), F.lit(max_items - 1))).alias("_k"))
              .withColumn(STATE, F.col("r") + F.col("_k")))
    wanted = needed.where(F.col(STATE) > 0).select(S.USER_ID, STATE).distinct()
    grouped = (copies.join(wanted, [S.USER_ID, STATE], "inner")
               .groupBy(S.USER_ID, STATE)
               .agg(F.sort_array(F.collect_list(F.struct("r", HISTORY_ITEM, S.EVENT_TYPE, ITEM_TEXT)), asc=False)
                    .alias("_items")))
    return grouped.select(S.USER_ID, STATE,
                          format_history(F.transform("_items", lambda x: x[HISTORY_ITEM]), max_chars)
                          .alias(S.HISTORY_TEXT), *item_texts(F.col("_items")))


def _before(partition: list[str]) -> Window:
    return Window.partitionBy(*partition).orderBy(TS_US).rangeBetween(Window.unboundedPreceding, -1)


def impression_counts(events: DataFrame, ads: DataFrame) -> DataFrame:
    """For every impression: counts of impressions and clicks strictly before it, by user, by ad, and the
    user's clicks in the ad's category; plus ``history_state`` (history events before it)."""
    require_columns(events, (*_EVENT_COLUMNS, TS_US), "impression_counts")
    cats = ads.select(S.AD_ID, S.CATEGORY)
    ad_rows = (events.where(F.col(S.EVENT_TYPE).isin(S.IMPRESSION, S.CLICK))
               .join(cats, S.AD_ID, "left")
               .select(S.EVENT_ID, S.USER_ID, S.AD_ID, TS_US, S.EVENT_TYPE,
                       F.coalesce(S.CATEGORY, F.lit("unknown")).alias(S.CATEGORY),
                       (F.col(S.EVENT_TYPE) == S.IMPRESSION).cast("long").alias("_imp"),
                       (F.col(S.EVENT_TYPE) == S.CLICK).cast("long").alias("_clk")))
    counted = (ad_rows
               .withColumn(USER_IMPRESSIONS, F.coalesce(F.sum("_imp").over(_before([S.USER_ID])), F.lit(0)))
               .withColumn(USER_CLICKS, F.coalesce(F.sum("_clk").over(_before([S.USER_ID])), F.lit(0)))
               .withColumn(AD_IMPRESSIONS, F.coalesce(F.sum("_imp").over(_before([S.AD_ID])), F.lit(0)))
               .withColumn(AD_CLICKS, F.coalesce(F.sum("_clk").over(_before([S.AD_ID])), F.lit(0)))
               .withColumn(CATEGORY_CLICKS,
                           F.coalesce(F.sum("_clk").over(_before([S.USER_ID, S.CATEGORY])), F.lit(0)))
               .where(F.col(S.EVENT_TYPE) == S.IMPRESSION)
               .drop("_imp", "_clk", S.EVENT_TYPE))
    # History state: the number of history events strictly before each impression.
    timeline = events.where(F.col(S.EVENT_TYPE).isin(S.IMPRESSION, *S.HISTORY_EVENT_TYPES)).select(
        S.EVENT_ID, S.USER_ID, S.AD_ID, TS_US, S.EVENT_TYPE,
        F.col(S.EVENT_TYPE).isin(*S.HISTORY_EVENT_TYPES).cast("long").alias("_h"))
    states = (timeline.withColumn(STATE, F.coalesce(F.sum("_h").over(_before([S.USER_ID])), F.lit(0)))
              .where(F.col(S.EVENT_TYPE) == S.IMPRESSION)
              .select(S.EVENT_ID, S.USER_ID, S.AD_ID, TS_US, STATE))
    return counted.join(states, [S.EVENT_ID, S.USER_ID, S.AD_ID, TS_US], "inner")


def impression_labels(impressions: DataFrame, events: DataFrame, *, attribution_hours: float) -> DataFrame:
    """``label`` (a click or conversion on the same ad within the attribution window, at or after the
    impression) and graded ``relevance`` (0 none, 1 click, 2 conversion) per impression."""
    require_columns(impressions, (S.EVENT_ID, S.USER_ID, S.AD_ID, TS_US), "impression_labels")
    require_columns(events, (S.USER_ID, S.AD_ID, S.EVENT_TYPE, TS_US), "impression_labels (events)")
    window_us = int(attribution_hours * 3600 * 1_000_000)
    pos = (events.where(F.col(S.EVENT_TYPE).isin(S.CLICK, S.CONVERSION))
           .select(F.col(S.USER_ID).alias("_u"), F.col(S.AD_ID).alias("_a"), F.col(TS_US).alias("_t"),
                   F.when(F.col(S.EVENT_TYPE) == S.CONVERSION, 2).otherwise(1).alias("_rel")))
    imp = impressions.select(S.EVENT_ID, S.USER_ID, S.AD_ID, TS_US)
    cond = ((imp[S.USER_ID] == pos["_u"]) & (imp[S.AD_ID] == pos["_a"])
            & (pos["_t"] >= imp[TS_US]) & (pos["_t"] <= imp[TS_US] + F.lit(window_us)))
    joined = imp.join(pos, cond, "left")
    return (joined.groupBy(S.EVENT_ID, S.USER_ID, S.AD_ID, TS_US)
            .agg(F.coalesce(F.max("_rel"), F.lit(0)).cast("int").alias(S.RELEVANCE))
            .withColumn(S.LABEL, (F.col(S.RELEVANCE) > 0).cast("int")))


def training_examples(events: DataFrame, ads: DataFrame, *, target_ds: list[str], max_items: int,
                      max_chars: int, attribution_hours: float, rate_prior: float,
                      rate_prior_strength: float) -> DataFrame:
    """One row per impression landed on a ``target_ds`` date, with its label, history text, ad text and
    numeric features, all point-in-time. ``events`` holds the clean events of the look-back window."""
    require_columns(events, (*_EVENT_COLUMNS, S.DS), "training_examples")
    require_columns(ads, _AD_COLUMNS, "training_examples (ads)")
    ev = with_event_micros(events)
    counts = impression_counts(ev, ads)
    targets = (ev.where((F.col(S.EVENT_TYPE) == S.IMPRESSION) & F.col(S.DS).cast("string").isin(target_ds))
               .select(S.EVENT_ID, S.USER_ID, S.AD_ID, TS_US, S.DS, S.EVENT_TIME))
    probes = targets.join(counts, [S.EVENT_ID, S.USER_ID, S.AD_ID, TS_US], "inner")
    labels = impression_labels(targets, ev, attribution_hours=attribution_hours)
    texts = history_states(history_items(ev, ads), probes, max_items=max_items, max_chars=max_chars)
    ad_info = ads.select(S.AD_ID, S.AD_TEXT, F.col(S.CATEGORY).alias("ad_category"), S.ADVERTISER_ID, S.PRICE)
    df = (probes.join(labels, [S.EVENT_ID, S.USER_ID, S.AD_ID, TS_US], "inner")
          .join(texts, [S.USER_ID, STATE], "left")
          .join(ad_info, S.AD_ID, "inner"))
    feats = numeric_features(
        user_impressions=F.col(USER_IMPRESSIONS), user_clicks=F.col(USER_CLICKS),
        ad_impressions=F.col(AD_IMPRESSIONS), ad_clicks=F.col(AD_CLICKS), price=F.col(S.PRICE),
        category_clicks=F.col(CATEGORY_CLICKS), rate_prior=rate_prior, rate_prior_strength=rate_prior_strength)
    return df.select(
        S.DS, S.EVENT_ID, S.USER_ID, S.AD_ID, S.EVENT_TIME,
        (F.col(TS_US) / F.lit(1e6)).alias(S.EVENT_TS),
        S.LABEL, S.RELEVANCE,
        F.coalesce(S.HISTORY_TEXT, F.lit("")).alias(S.HISTORY_TEXT),
        S.AD_TEXT, F.col("ad_category").alias(S.CATEGORY), S.ADVERTISER_ID,
        *feats,
        *[F.coalesce(c, F.array().cast("array<string>")).alias(c) for c in S.HISTORY_ITEM_TEXTS],
        *[F.col(c).cast("long").alias(c) for c in COUNT_COLUMNS],
        F.col(STATE).cast("long").alias("history_events"),
    )


def user_profiles(events: DataFrame, ads: DataFrame, *, as_of: str, max_items: int, max_chars: int,
                  recent_clicks: int = 20, recent_queries: int = 5) -> DataFrame:
    """Per user, as of the end of ``as_of``: history text and the history's texts by kind (same as training),
    counts, clicked ads, recent queries and clicks per category. Only events before the end of ``as_of`` count."""
    require_columns(events, _EVENT_COLUMNS, "user_profiles")
    end = F.to_timestamp(F.date_add(F.lit(as_of).cast("date"), 1))
    ev = with_event_micros(events.where(F.col(S.EVENT_TIME) < end))
    items = history_items(ev, ads)
    newest = Window.partitionBy(S.USER_ID).orderBy(F.col("r").desc())
    hist = (items.withColumn("_n", F.row_number().over(newest)).where(F.col("_n") <= max_items)
            .groupBy(S.USER_ID)
            .agg(F.sort_array(F.collect_list(F.struct("r", HISTORY_ITEM, S.EVENT_TYPE, ITEM_TEXT)), asc=False)
                 .alias("_items"), F.max("r").alias("history_events"))
            .select(S.USER_ID, "history_events",
                    format_history(F.transform("_items", lambda x: x[HISTORY_ITEM]), max_chars)
                    .alias(S.HISTORY_TEXT), *item_texts(F.col("_items"))))
    cats = ads.select(S.AD_ID, S.CATEGORY)
    clicks = ev.where(F.col(S.EVENT_TYPE).isin(S.CLICK, S.CONVERSION)).join(cats, S.AD_ID, "left")
    per_cat = (ev.where(F.col(S.EVENT_TYPE) == S.CLICK).join(cats, S.AD_ID, "left")
               .groupBy(S.USER_ID, F.coalesce(S.CATEGORY, F.lit("unknown")).alias(S.CATEGORY)).count()
               .groupBy(S.USER_ID)
               .agg(F.map_from_entries(F.collect_list(F.struct(S.CATEGORY, "count"))).alias(CATEGORY_CLICKS)))
    clicked = (clicks.groupBy(S.USER_ID)
               .agg(F.sort_array(F.collect_set(S.AD_ID)).alias("clicked_ad_ids"),
                    F.slice(F.sort_array(F.collect_list(F.struct(TS_US, S.AD_ID)), asc=False), 1,
                            recent_clicks).alias("_recent")))
    clicked = clicked.select(S.USER_ID, "clicked_ad_ids",
                             F.array_distinct(F.transform("_recent", lambda x: x[S.AD_ID]))
                             .alias("recent_clicked_ad_ids"))
    queries = (ev.where(F.col(S.EVENT_TYPE) == S.QUERY).groupBy(S.USER_ID)
               .agg(F.slice(F.sort_array(F.collect_list(F.struct(TS_US, S.TEXT)), asc=False), 1,
                            recent_queries).alias("_q"))
               .select(S.USER_ID, F.transform("_q", lambda x: x[S.TEXT]).alias("recent_queries")))
    counts = ev.groupBy(S.USER_ID).agg(
        F.sum((F.col(S.EVENT_TYPE) == S.IMPRESSION).cast("long")).alias(USER_IMPRESSIONS),
        F.sum((F.col(S.EVENT_TYPE) == S.CLICK).cast("long")).alias(USER_CLICKS),
        F.max(S.EVENT_TIME).alias("last_event_time"))
    empty_ids = F.array().cast("array<string>")
    return (counts.join(hist, S.USER_ID, "left").join(clicked, S.USER_ID, "left")
            .join(queries, S.USER_ID, "left").join(per_cat, S.USER_ID, "left")
            .select(F.lit(as_of).cast("date").alias(S.DS), S.USER_ID,
                    F.coalesce(S.HISTORY_TEXT, F.lit("")).alias(S.HISTORY_TEXT),
                    F.coalesce("history_events", F.lit(0)).cast("long").alias("history_events"),
                    F.coalesce("clicked_ad_ids", empty_ids).alias("clicked_ad_ids"),
                    F.coalesce("recent_clicked_ad_ids", empty_ids).alias("recent_clicked_ad_ids"),
                    F.coalesce("recent_queries", empty_ids).alias("recent_queries"),
                    *[F.coalesce(c, empty_ids).alias(c) for c in S.HISTORY_ITEM_TEXTS],
                    F.coalesce(CATEGORY_CLICKS, F.create_map().cast("map<string,bigint>"))
                    .alias(CATEGORY_CLICKS),
                    USER_IMPRESSIONS, USER_CLICKS, "last_event_time")
            .transform(with_content_hash))


def ad_snapshot(ads: DataFrame, events: DataFrame, *, as_of: str) -> DataFrame:
    """The clean catalog with impressions and clicks per ad in the look-back window up to ``as_of``."""
    require_columns(ads, _AD_COLUMNS, "ad_snapshot")
    require_columns(events, (S.AD_ID, S.EVENT_TYPE, S.EVENT_TIME), "ad_snapshot (events)")
    end = F.to_timestamp(F.date_add(F.lit(as_of).cast("date"), 1))
    stats = (events.where((F.col(S.EVENT_TIME) < end) & F.col(S.AD_ID).isNotNull())
             .groupBy(S.AD_ID).agg(
                 F.sum((F.col(S.EVENT_TYPE) == S.IMPRESSION).cast("long")).alias(AD_IMPRESSIONS),
                 F.sum((F.col(S.EVENT_TYPE) == S.CLICK).cast("long")).alias(AD_CLICKS)))
    return (ads.join(stats, S.AD_ID, "left")
            .withColumn(AD_IMPRESSIONS, F.coalesce(AD_IMPRESSIONS, F.lit(0)).cast("long"))
            .withColumn(AD_CLICKS, F.coalesce(AD_CLICKS, F.lit(0)).cast("long"))
            .withColumn(S.DS, F.lit(as_of).cast("date")).transform(with_content_hash))


def ad_snapshots(ads: DataFrame, events: DataFrame, *, lookback_days: int) -> DataFrame:
    """:func:`ad_snapshot` for every date of ``ads`` (the catalog of each date, with ``ds``) in one pass: the
    counts of date ``d`` come from the events landed in ``[d - lookback_days, d]`` with an event time before
    the end of ``d``, as a nightly run for ``d`` counts them."""
    require_columns(ads, (*_AD_COLUMNS, S.DS), "ad_snapshots")
    require_columns(events, (S.DS, S.AD_ID, S.EVENT_TYPE, S.EVENT_TIME), "ad_snapshots (events)")
    daily = (events.where(F.col(S.AD_ID).isNotNull())
             .groupBy(F.col(S.DS).alias("_landed"), S.AD_ID, F.to_date(S.EVENT_TIME).alias("_day"))
             .agg(F.sum((F.col(S.EVENT_TYPE) == S.IMPRESSION).cast("long")).alias("_imp"),
                  F.sum((F.col(S.EVENT_TYPE) == S.CLICK).cast("long")).alias("_clk")))
    dates = ads.select(S.DS).distinct()
    seen = ((F.col("_landed") >= F.date_sub(F.col(S.DS), lookback_days)) & (F.col("_landed") <= F.col(S.DS))
            & (F.col("_day") <= F.col(S.DS)))
    stats = (F.broadcast(dates).join(daily, seen, "inner").groupBy(S.DS, S.AD_ID)
             .agg(F.sum("_imp").alias(AD_IMPRESSIONS), F.sum("_clk").alias(AD_CLICKS)))
    return (ads.join(stats, [S.DS, S.AD_ID], "left")
            .withColumn(AD_IMPRESSIONS, F.coalesce(AD_IMPRESSIONS, F.lit(0)).cast("long"))
            .withColumn(AD_CLICKS, F.coalesce(AD_CLICKS, F.lit(0)).cast("long"))
            .select(*ads.columns, AD_IMPRESSIONS, AD_CLICKS).transform(with_content_hash))
