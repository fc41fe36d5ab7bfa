"""Beyond-accuracy metrics of a recommendations table: coverage, diversity, personalization, novelty, fairness.

Every metric is a Spark aggregation that grows linearly with the number of recommendations (no users x users
join); only scalars and a small histogram reach the driver. The metrics are set-level: the order of a user's
list (its ``rank`` column, if any) does not enter them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame, Row
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.errors import InputDataError
from adrec_spark.frames import require_columns

log = logging.getLogger(__name__)

NAN = float("nan")
N_USERS = "n_users"  # popularity: distinct users who interacted with the ad in the training period
EMBEDDING = "embedding"

# Internal column names of the joined frame (chosen not to clash with the caller's names).
_KNOWN, _CAT, _ADV, _EMB = "_known", "_category", "_advertiser", "_emb"
_POP_ROWS, _POP_USERS = "_pop_rows", "_pop_users"


@dataclass(frozen=True)
class _Cols:
    user: str
    item: str
    category: str
    advertiser: str
    embedding: str | None


def beyond_accuracy(
    recs: DataFrame,
    ads: DataFrame,
    *,
    popularity: DataFrame | None = None,
    total_users: int | None = None,
    embedding_col: str | None = EMBEDDING,
    catalog_size: int | None = None,
    user_col: str = S.USER_ID,
    item_col: str = S.AD_ID,
    category_col: str = S.CATEGORY,
    advertiser_col: str = S.ADVERTISER_ID,
) -> dict[str, float]:
    """Coverage, diversity, personalization, novelty and advertiser concentration of recommendation lists.

    Args:
        recs: one row per recommended item: ``user_id``, ``ad_id`` (and usually ``rank``, not used here).
        ads: the catalog: ``ad_id``, ``category``, ``advertiser_id`` and, unless ``embedding_col`` is None, an
            ``array<float>`` embedding column. Every recommended ad must be in it, once.
        popularity: ``ad_id``, ``n_users`` (distinct users who interacted with the ad in the training period),
            one row per ad; with ``total_users``, the number of users in that period. Without it novelty is NaN.
        total_users: see ``popularity``.
        embedding_col: the embedding column of ``ads``; None skips ``ild_embedding`` (NaN).
        catalog_size: the denominator of coverage; default: the number of distinct ads in ``ads``.
        user_col, item_col, category_col, advertiser_col: column names.

    Returns:
        * ``coverage``: distinct recommended ads / catalog size.
        * ``ild_category``: mean over users with >= 2 items of the share of item pairs in different categories.
        * ``ild_embedding``: mean over users with >= 2 items of the mean pairwise 1 - cosine similarity.
        * ``personalization``: 1 - mean over all user pairs of the cosine similarity of their binary
          recommendation vectors (NaN with a single user).
        * ``novelty``: mean over recommended rows of -log2(n_users / total_users); an ad missing from
          ``popularity`` (or with a null or zero count) gets p = 1 / (total_users + 1).
        * ``gini_advertiser``: Gini coefficient, sum_i (2i - n - 1) x_i / (n sum x) over ascending x, of the
          number of recommendations per advertiser, over every advertiser in ``ads`` (zeros included).
        * ``top_advertiser_share``: share of recommendations going to the most-recommended advertiser.
        * ``n_users``, ``n_recommendations``.

    Raises:
        MissingColumnsError: a column is missing.
        InputDataError: empty ``recs``, nulls, an ad recommended twice to a user, a recommended ad missing
            from (or duplicated in) ``ads`` or ``popularity``, unusable embeddings, counts above ``total_users``.
        ValueError: inconsistent arguments (``popularity`` without ``total_users``, non-positive sizes).
    """
    _check_arguments(popularity, total_users, catalog_size)
    cols = _Cols(user_col, item_col, category_col, advertiser_col, embedding_col)
    _require(recs, ads, popularity, cols)
    enriched = _enrich(recs, ads, popularity, cols, total_users=total_users)
    # Every metric reads the per-user lists (one row per user); kept for the two queries below.
    per_user = _per_user(enriched, cols).persist()
    try:
        checks = _one_row(_user_summary(per_user, cols), _catalog_stats(ads, cols))
        _check_stats(checks, cols, total_users=total_users)
        per_item = _per_item(per_user, cols)
        spread = _one_row(_item_summary(per_item), _advertiser_histogram(per_item))
    finally:
        per_user.unpersist()
    return _metrics(checks, spread, catalog_size=catalog_size, with_popularity=popularity is not None)


def _metrics(checks: Row, spread: Row, *, catalog_size: int | None, with_popularity: bool) -> dict[str, float]:
    n_recs, n_users = int(checks["_rows"]), int(checks["_users"])
    out: dict[str, float] = {
        "coverage": spread["_items"] / (catalog_size or checks["_catalog_ads"]),
        "ild_category": _float_or_nan(checks["ild_category"]),
        "ild_embedding": _float_or_nan(checks["ild_embedding"]),
        "personalization": _personalization(float(spread["overlap"]), n_users=n_users),
        "novelty": float(checks["_novelty_sum"]) / n_recs if with_popularity else NAN,
    }
    counts = {int(r["value"]): int(r["advertisers"]) for r in spread["histogram"]}
    out |= _advertiser_concentration(counts, n_advertisers=int(checks["_catalog_advertisers"]), n_recs=n_recs)
    out |= {"n_users": float(n_users), "n_recommendations": float(n_recs)}
    log.info("beyond_accuracy: %d recommendations to %d users, coverage %.4f", n_recs, n_users, out["coverage"])
    return out


def _one_row(*frames: DataFrame) -> Row:
    """The columns of several one-row aggregates, computed in a single query."""
    return reduce(DataFrame.crossJoin, frames).first()


def _check_arguments(popularity: DataFrame | None, total_users: int | None, catalog_size: int | None) -> None:
    if (popularity is None) != (total_users is None):
        raise ValueError("beyond_accuracy: pass popularity and total_users together (or neither)")
    if total_users is not None and total_users < 1:
        raise ValueError(f"beyond_accuracy: total_users must be >= 1, got {total_users}")
    if catalog_size is not None and catalog_size < 1:
        raise ValueError(f"beyond_accuracy: catalog_size must be >= 1, got {catalog_size}")


def _require(recs: DataFrame, ads: DataFrame, popularity: DataFrame | None, cols: _Cols) -> None:
    require_columns(recs, (cols.user, cols.item), "beyond_accuracy (recs)")
    ad_cols = (cols.item, cols.category, cols.advertiser, *([cols.embedding] if cols.embedding else []))
    require_columns(ads, ad_cols, "beyond_accuracy (ads)")
    if popularity is not None:
        require_columns(popularity, (cols.item, N_USERS), "beyond_accuracy (popularity)")


def _enrich(recs: DataFrame, ads: DataFrame, popularity: DataFrame | None, cols: _Cols, *,
            total_users: int | None) -> DataFrame:
    """One row per recommendation with the ad's category, advertiser, unit embedding and novelty term.

    Popularity is grouped by ad so that a duplicated row cannot multiply recommendations (it is counted in
    ``_pop_rows`` and reported instead); duplicated catalog rows are caught by :func:`_catalog_stats`.
    """
    lookup = ads.select(
        cols.item, F.col(cols.category).alias(_CAT), F.col(cols.advertiser).alias(_ADV), F.lit(True).alias(_KNOWN),
        *([_unit(F.col(cols.embedding)).alias(_EMB)] if cols.embedding else []),
    )
    out = recs.select(cols.user, cols.item).join(lookup, on=cols.item, how="left")
    if popularity is None:
        return out
    pop = popularity.groupBy(cols.item).agg(F.count(F.lit(1)).alias(_POP_ROWS),
                                            F.max(F.col(N_USERS).cast("double")).alias(_POP_USERS))
    seen = F.col(_POP_USERS) > 0
    p = F.when(seen, F.col(_POP_USERS) / F.lit(float(total_users))).otherwise(1.0 / (total_users + 1.0))
    return out.join(pop, on=cols.item, how="left").withColumn("_novelty", -F.log2(p))


def _unit(emb: Column) -> Column:
    """The embedding as array<double> scaled to unit length; null when null or all zeros (NaN stays NaN)."""
    vec = emb.cast("array<double>")
    norm = F.sqrt(F.aggregate(vec, F.lit(0.0), lambda acc, x: acc + x * x))
    return F.when(norm > 0, F.transform(vec, lambda x: x / norm))


def _per_user(enriched: DataFrame, cols: _Cols) -> DataFrame:
    """One row per user: list length ``k``, items (with advertiser), same-category pairs ``same``,
    |sum of unit embeddings|^2 ``sq``, and partial counts for the checks."""
    per_user = enriched.groupBy(cols.user).agg(
        F.count(F.lit(1)).alias("k"),
        F.collect_list(F.struct(F.col(cols.item).alias("item"), F.col(_ADV).alias("advertiser"))).alias("items"),
        F.collect_list(_CAT).alias("categories"),
        *([F.collect_list(_EMB).alias("embeddings")] if cols.embedding else []),
        *_check_partials(enriched, cols),
    )
    per_user = per_user.withColumn("same", _same_category_pairs(F.col("categories")))
    if cols.embedding:
        per_user = per_user.withColumn("sq", _squared_norm_of_sum(F.col("embeddings")))
    return per_user


def _check_partials(enriched: DataFrame, cols: _Cols) -> list[Column]:
    """Per-user counts summed later by :func:`_user_summary` (named as the summary columns)."""
    item, known = F.col(cols.item), F.col(_KNOWN)
    unknown = known.isNull() & item.isNotNull()
    aggs = [
        F.count(F.when(F.col(cols.user).isNull() | item.isNull(), 1)).alias("_null_key"),
        F.count(F.when(unknown, 1)).alias("_unknown"),
        F.min(F.when(unknown, item)).alias("_unknown_example"),
        F.count(F.when(known & (F.col(_CAT).isNull() | F.col(_ADV).isNull()), 1)).alias("_null_attr"),
    ]
    if cols.embedding:
        emb = F.col(_EMB)
        bad = emb.isNull() | (F.size(emb) == 0) | F.exists(emb, lambda x: F.isnan(x) | x.isNull())
        aggs += [F.count(F.when(known & bad, 1)).alias("_bad_emb"),
                 F.min(F.size(emb)).alias("_min_dim"), F.max(F.size(emb)).alias("_max_dim")]
    if _POP_ROWS in enriched.columns:
        aggs += [F.count(F.when(F.col(_POP_ROWS) > 1, 1)).alias("_dup_pop"),
                 F.max(_POP_USERS).alias("_max_pop"), F.sum("_novelty").alias("_novelty_sum")]
    return aggs


def _same_category_pairs(categories: Column) -> Column:
    """sum over the distinct categories c of the list of C(n_c, 2)."""
    def add(acc: Column, category: Column) -> Column:
        n = F.size(F.filter(categories, lambda x: x == category)).cast("double")
        return acc + n * (n - 1) / 2

    return F.aggregate(F.array_distinct(categories), F.lit(0.0), add)


def _squared_norm_of_sum(embeddings: Column) -> Column:
    zero = F.array_repeat(F.lit(0.0), F.coalesce(F.size(F.get(embeddings, 0)), F.lit(0)))
    total = F.aggregate(embeddings, zero, lambda acc, e: F.zip_with(acc, e, lambda a, b: a + b))
    return F.aggregate(total, F.lit(0.0), lambda acc, x: acc + x * x)


def _user_summary(per_user: DataFrame, cols: _Cols) -> DataFrame:
    """Users, recommendations, duplicates, check counts and mean intra-list diversity (users with k >= 2).

    Categories: pairs in different categories = C(k, 2) - sum over categories of C(n_c, 2). Embeddings: with
    unit vectors e_i, sum_{i<j} cos(e_i, e_j) = (|sum_i e_i|^2 - k) / 2, so the mean cosine is
    (sq - k) / (k (k - 1)).
    """
    k = F.col("k").cast("double")
    has_pairs = k >= 2
    ild_category = F.avg(F.when(has_pairs, 1.0 - F.col("same") / (k * (k - 1) / 2)))
    ild_embedding = (F.avg(F.when(has_pairs, 1.0 - (F.col("sq") - k) / (k * (k - 1)))) if cols.embedding
                     else F.lit(None).cast("double"))
    distinct_items = F.size(F.array_distinct(F.col("items").getField("item")))
    sums = ["_null_key", "_unknown", "_null_attr", *(["_bad_emb"] if cols.embedding else []),
            *(["_dup_pop", "_novelty_sum"] if "_dup_pop" in per_user.columns else [])]
    extremes = [F.min("_unknown_example").alias("_unknown_example"),
                *([F.min("_min_dim").alias("_min_dim"), F.max("_max_dim").alias("_max_dim")] if cols.embedding
                  else []),
                *([F.max("_max_pop").alias("_max_pop")] if "_max_pop" in per_user.columns else [])]
    return per_user.agg(
        F.count(F.lit(1)).alias("_users"),
        F.coalesce(F.sum("k"), F.lit(0)).alias("_rows"),
        F.coalesce(F.sum(F.col("k") - distinct_items), F.lit(0)).alias("_duplicates"),
        *(F.coalesce(F.sum(c), F.lit(0)).alias(c) for c in sums),
        *extremes,
        ild_category.alias("ild_category"),
        ild_embedding.alias("ild_embedding"),
    )


def _per_item(per_user: DataFrame, cols: _Cols) -> DataFrame:
    """One row per recommended item: its advertiser, how often it is recommended, and with a_u = 1 / sqrt(K_u)
    the sums s1 = sum_{u has i} a_u and s2 = sum_{u has i} a_u^2."""
    weighted = per_user.select(F.explode("items").alias("it"), (1.0 / F.sqrt("k")).alias("a"))
    return weighted.groupBy(F.col("it.item").alias(cols.item)).agg(
        F.first("it.advertiser").alias("advertiser"),
        F.count(F.lit(1)).alias("n"),
        F.sum("a").alias("s1"),
        F.sum(F.col("a") * F.col("a")).alias("s2"),
    )


def _item_summary(per_item: DataFrame) -> DataFrame:
    """Distinct recommended items and sum_{u<v} |L_u & L_v| / sqrt(K_u K_v) = sum_i (s1^2 - s2) / 2."""
    overlap = F.sum((F.col("s1") * F.col("s1") - F.col("s2")) / 2)
    return per_item.agg(F.count(F.lit(1)).alias("_items"), F.coalesce(overlap, F.lit(0.0)).alias("overlap"))


def _advertiser_histogram(per_item: DataFrame) -> DataFrame:
    """{recommendation count: number of advertisers with it} as one array (small: few distinct counts)."""
    per_advertiser = per_item.groupBy("advertiser").agg(F.sum("n").alias("count"))
    histogram = per_advertiser.groupBy(F.col("count").alias("value")).agg(F.count(F.lit(1)).alias("advertisers"))
    return histogram.agg(F.collect_list(F.struct("value", "advertisers")).alias("histogram"))


def _catalog_stats(ads: DataFrame, cols: _Cols) -> DataFrame:
    return ads.agg(
        F.count(F.lit(1)).alias("_catalog_rows"),
        F.count(F.when(F.col(cols.item).isNull(), 1)).alias("_catalog_null_ids"),
        F.countDistinct(cols.item).alias("_catalog_ads"),
        F.countDistinct(cols.advertiser).alias("_catalog_advertisers"),
    )


def _check_stats(s: Row, cols: _Cols, *, total_users: int | None) -> None:
    where = "beyond_accuracy"
    if s["_rows"] == 0:
        raise InputDataError(f"{where}: recs has no rows; nothing to evaluate")
    if s["_null_key"]:
        raise InputDataError(f"{where}: {s['_null_key']} of {s['_rows']} recommendation(s) have a null "
                             f"{cols.user!r} or {cols.item!r}")
    if s["_unknown"]:
        raise InputDataError(f"{where}: {s['_unknown']} recommendation(s) of ads missing from the ads table "
                             f"(e.g. {s['_unknown_example']})")
    _check_catalog(s, cols)
    if s["_duplicates"]:
        raise InputDataError(f"{where}: {s['_duplicates']} duplicate ({cols.user}, {cols.item}) "
                             "recommendation(s); each ad may be recommended once per user")
    if s["_null_attr"]:
        raise InputDataError(f"{where}: {s['_null_attr']} recommendation(s) of ads with a null "
                             f"{cols.category!r} or {cols.advertiser!r}")
    if cols.embedding:
        _check_embeddings(s, cols.embedding)
    if total_users is not None:
        _check_popularity(s, total_users)


def _check_catalog(s: Row, cols: _Cols) -> None:
    if s["_catalog_null_ids"]:
        raise InputDataError(f"beyond_accuracy: ads has {s['_catalog_null_ids']} row(s) with a null {cols.item!r}")
    extra = s["_catalog_rows"] - s["_catalog_ads"]
    if extra:
        raise InputDataError(f"beyond_accuracy: ads lists {extra} {cols.item!r} value(s) more than once; "
                             "the catalog needs one row per ad")


def _check_embeddings(s: Row, embedding_col: str) -> None:
    if s["_bad_emb"]:
        raise InputDataError(f"beyond_accuracy: {s['_bad_emb']} recommendation(s) of ads whose {embedding_col!r} "
                             "is null, empty, all zeros or contains null/NaN")
    if s["_min_dim"] != s["_max_dim"]:
        raise InputDataError(f"beyond_accuracy: {embedding_col!r} of recommended ads differ in length "
                             f"({s['_min_dim']} to {s['_max_dim']})")


def _check_popularity(s: Row, total_users: int) -> None:
    if s["_dup_pop"]:
        raise InputDataError(f"beyond_accuracy: {s['_dup_pop']} recommendation(s) of an ad listed more than "
                             "once in popularity")
    if s["_max_pop"] is not None and s["_max_pop"] > total_users:
        raise InputDataError(f"beyond_accuracy: popularity n_users reaches {s['_max_pop']:.0f}, above "
                             f"total_users={total_users}")


def _personalization(overlap: float, *, n_users: int) -> float:
    """1 - the mean cosine similarity over the C(U, 2) user pairs."""
    if n_users < 2:
        log.warning("beyond_accuracy: personalization needs at least 2 users; NaN")
        return NAN
    return 1.0 - overlap / (n_users * (n_users - 1) / 2)


def _advertiser_concentration(counts: dict[int, int], *, n_advertisers: int, n_recs: int) -> dict[str, float]:
    """Gini and top share; advertisers of the catalog without any recommendation count as zeros."""
    zeros = n_advertisers - sum(counts.values())
    if zeros > 0:
        counts = counts | {0: zeros}
    return {"gini_advertiser": gini_from_histogram(counts), "top_advertiser_share": max(counts) / n_recs}


def gini_from_histogram(counts: dict[int, int]) -> float:
    """Gini coefficient sum_i (2i - n - 1) x_i / (n sum x) of values given as {value: multiplicity}.

    The sorted values are walked block by block: a block of c equal values v at 1-based positions s+1..s+c
    contributes v * (2 (c s + c (c + 1) / 2) - c (n + 1)).
    """
    n = sum(counts.values())
    total = sum(v * c for v, c in counts.items())
    if n == 0 or total == 0:
        return NAN
    acc, start = 0.0, 0
    for value, mult in sorted(counts.items()):
        acc += value * (2 * (mult * start + mult * (mult + 1) / 2) - mult * (n + 1))
        start += mult
    return acc / (n * total)


def _float_or_nan(value: float | None) -> float:
    return NAN if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
