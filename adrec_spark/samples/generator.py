"""Sample ad-platform logs for the demo, the tests and scale benchmarks (numpy, reproducible by seed).

Users' tastes live below the category, as on real platforms, and clicks follow those tastes; the category is
only a coarse proxy for them. Ad titles and descriptions carry the words of the tastes; users' searches and
reviews reveal theirs in their own words, which overlap with the ads' only in part (the vocabulary is in
``adrec_spark.samples.vocabulary``). A few deliberately bad rows per day exercise the ETL's rejection paths.

**Ads.** Each ad sells one product of its category (``running shoes`` in fashion) under one of the category's
four brands (its ``advertiser_id``), at a price tier (budget 30%, mid 45%, luxury 25%; the price follows the
tier, and most budget or luxury titles say so), with zero to two attributes such as ``eco-friendly``,
``vintage`` or ``portable`` in the title, and a latent quality. A product may belong to a **theme** that
crosses categories: running shoes, a running watch, energy gels and a marathon training plan all belong to
"running", and the description carries the theme's tagline ("Built for runners.").

**Users.** Each user has one or two themes; one or two liked attributes and, for 40%, one disliked; a price
attitude (budget-minded 35%, luxury-minded 20%, neither 45%); two favourite brands; two products they are
shopping for (mostly from their themes); an interest over categories (60% implied by their themes, 40%
noise); an activity level and a click bias.

**Impressions** go half to a category drawn from the user's interest and half to a random category, to an ad
drawn uniformly within it (the platform targets by category only). **A click** happens with probability
``sigmoid(logit)``::

    logit = -3.4 + 1.8 [ad's theme is one of the user's]     + 1.0 x (liked attributes the ad carries)
                 - 1.2 x (disliked attributes it carries)     + 1.0 [brand is a favourite]
                 + 1.5 [product is one the user shops for]    + 0.8 [tier fits the price attitude]
                 - 1.0 [tier clashes with it]                 + 1.0 x (user's interest in the ad's category)
                 + ad quality (sd 0.5) + user bias (sd 0.5)

12% of clicks convert (``value`` = price), and half of the conversions are reviewed.

**Searches** (5% of events) reveal tastes: a theme's phrase ("couch to 5k", 35%), a product the user shops
for in their own words ("coffee maker" for an espresso machine, 20%), a liked attribute with that product
("low waste coffee maker", 20%), a favourite brand (10%) or a plain search of a category of interest
(15%); budget- and luxury-minded users often add "cheap", "under $50", "premium", ... **Reviews** open on
the product (praise when its quality is fair, complaint otherwise) and add a remark from one of the
reviewer's tastes ("Perfect for my morning runs.", "I wanted something more eco friendly.").

Output, in the landing layout the ETL reads::

    <out>/events/date=YYYY-MM-DD/events-0.jsonl   (or .parquet / .csv)
    <out>/ads/date=<first day>/ads-0.jsonl
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from adrec_spark.samples.vocabulary import (
    CATEGORIES,
    CATEGORY_TAGLINE,
    LOG_PRICE,
    PRICE_TIERS,
    PRODUCTS,
    REVIEW_OPEN_BAD,
    REVIEW_OPEN_GOOD,
    REVIEW_REMARK_BAD,
    REVIEW_REMARK_GOOD,
    STYLES,
    THEMES,
    TITLE_SUFFIX,
)

log = logging.getLogger(__name__)

CATEGORY_NAMES = list(CATEGORIES)
THEME_NAMES = list(THEMES)
STYLE_NAMES = list(STYLES)
# Every product and brand, numbered across categories (a product's theme is -1 when it has none).
PRODUCT_LIST = [(c, p) for c in CATEGORY_NAMES for p in PRODUCTS[c]]
PRODUCT_CATEGORY = np.array([CATEGORY_NAMES.index(c) for c, _ in PRODUCT_LIST])
PRODUCT_THEME = np.array([THEME_NAMES.index(p.theme) if p.theme else -1 for _, p in PRODUCT_LIST])
BRAND_LIST = [(c, b) for c in CATEGORY_NAMES for b in CATEGORIES[c]["brands"]]
BRAND_CATEGORY = np.array([CATEGORY_NAMES.index(c) for c, _ in BRAND_LIST])
TIERS = (-1, 0, 1)  # budget, mid, luxury; a user's price attitude uses the same signs


@dataclass(frozen=True)
class ClickWeights:
    """The click model's coefficients on the logit scale (see the module docstring)."""

    base: float = -3.4
    theme: float = 1.8
    liked_attribute: float = 1.0
    disliked_attribute: float = -1.2
    brand: float = 1.0
    wanted_product: float = 1.5
    price_fit: float = 0.8
    price_clash: float = -1.0
    category_interest: float = 1.0
    quality_sd: float = 0.5
    user_bias_sd: float = 0.5


CLICK = ClickWeights()


@dataclass(frozen=True)
class GeneratorSpec:
    n_users: int = 400
    n_ads: int = 300
    n_events: int = 40_000
    n_days: int = 14
    start: dt.date = dt.date(2024, 1, 1)
    seed: int = 0
    bad_rows_per_day: int = 7
    fmt: str = "json"

    def __post_init__(self) -> None:
        for key in ("n_users", "n_ads", "n_events", "n_days"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1")
        if self.n_ads < len(CATEGORIES):
            raise ValueError(f"n_ads must be >= {len(CATEGORIES)} (one per category)")
        if self.fmt not in ("json", "parquet", "csv"):
            raise ValueError("fmt must be json, parquet or csv")


@dataclass(frozen=True)
class Tastes:
    """Every user's latent tastes; row ``i`` is user ``u{i}``."""

    themes: np.ndarray  # (users, themes) bool
    attributes: np.ndarray  # (users, styles) int8: +1 liked, -1 disliked, 0 indifferent
    price: np.ndarray  # (users,) int8: -1 budget-minded, 0 neither, +1 luxury-minded
    brands: np.ndarray  # (users, brands) bool: favourite brands
    wants: np.ndarray  # (users, products) bool: products the user shops for
    interest: np.ndarray  # (users, categories) float, rows sum to 1
    activity: np.ndarray  # (users,) share of the events, sums to 1
    bias: np.ndarray  # (users,) click bias on the logit scale


@dataclass(frozen=True)
class World:
    """The catalog and the users behind the logs, before any event is drawn."""

    ads: pd.DataFrame  # public catalog columns, then latent ones: _cat, _product, _brand, _tier, _show_tier, _quality
    ad_attributes: np.ndarray  # (ads, styles) bool
    users: Tastes


def _pick(options: list[str] | tuple[str, ...], u: float) -> str:
    """The option a uniform draw ``u`` in [0, 1) selects."""
    return options[min(int(u * len(options)), len(options) - 1)]


def _rank_rows(rng: np.random.Generator, n_rows: int, n_cols: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """Per row, a random order of the columns as ranks (0 first); disallowed columns rank last."""
    keys = rng.random((n_rows, n_cols))
    if allowed is not None:
        keys = np.where(allowed, keys, 2.0)
    return keys.argsort(axis=1).argsort(axis=1)


def _sample_rows(rng: np.random.Generator, cum_probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each index in ``rows``, a column drawn from that row of the cumulative matrix."""
    u = rng.random(len(rows))[:, None]
    return (cum_probs[rows] < u).sum(axis=1).clip(max=cum_probs.shape[1] - 1)


def _uniform_within(rng: np.random.Generator, groups: np.ndarray, group_of: np.ndarray) -> np.ndarray:
    """For each entry of ``groups``, a uniformly drawn index ``i`` with ``group_of[i]`` equal to it."""
    order = np.argsort(group_of, kind="stable")
    count = np.bincount(group_of, minlength=int(group_of.max()) + 1)
    offset = np.concatenate([[0], np.cumsum(count)[:-1]])
    return order[offset[groups] + (rng.random(len(groups)) * count[groups]).astype(np.int64)]


def sample_world(spec: GeneratorSpec) -> World:
    """The catalog and users' tastes of ``spec`` (the same for the same seed, whatever is generated later)."""
    rng = np.random.default_rng([spec.seed, 0])
    ads, attributes = _make_catalog(spec, rng)
    return World(ads=ads, ad_attributes=attributes, users=_make_users(spec, rng))


def _ad_texts(ads: pd.DataFrame, attributes: np.ndarray, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Titles (brand, shown tier word, attribute words, product, suffix) and descriptions (benefit, tagline)."""
    draws = rng.random((len(ads), 4 + len(STYLE_NAMES)))
    titles, descriptions = [], []
    for i, (cat, prod, brand, tier, show_tier) in enumerate(
            ads[["_cat", "_product", "_brand", "_tier", "_show_tier"]].itertuples(index=False)):
        c, product = CATEGORY_NAMES[cat], PRODUCT_LIST[prod][1]
        words = [_pick(STYLES[s]["ad"], draws[i, 4 + k]) for k, s in enumerate(STYLE_NAMES) if attributes[i, k]]
        if tier and show_tier:
            words.insert(0, _pick(PRICE_TIERS["budget" if tier < 0 else "luxury"]["ad"], draws[i, 0]))
        name = BRAND_LIST[brand][1]
        titles.append(" ".join([name, *words, product.name]) + _pick(TITLE_SUFFIX, draws[i, 1]))
        tagline = (_pick(THEMES[product.theme]["tagline"], draws[i, 2]) if product.theme
                   else CATEGORY_TAGLINE.format(category=c))
        benefit = _pick(CATEGORIES[c]["benefits"], draws[i, 3])
        descriptions.append(f"{product.name[0].upper()}{product.name[1:]} by {name}: {benefit}. {tagline}")
    return titles, descriptions


def _make_catalog(spec: GeneratorSpec, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    n = spec.n_ads
    cat = np.arange(n) % len(CATEGORY_NAMES)  # every category has ads
    rng.shuffle(cat)
    product = _uniform_within(rng, cat, PRODUCT_CATEGORY)
    brand = _uniform_within(rng, cat, BRAND_CATEGORY)
    tier = rng.choice(TIERS, p=[0.30, 0.45, 0.25], size=n)
    allowed = np.array([[STYLES[s]["where"] is None or c in STYLES[s]["where"] for s in STYLE_NAMES]
                        for c in CATEGORY_NAMES])[cat]
    n_attributes = np.minimum(rng.choice([0, 1, 2], p=[0.20, 0.55, 0.25], size=n), allowed.sum(axis=1))
    attributes = _rank_rows(rng, n, len(STYLE_NAMES), allowed) < n_attributes[:, None]
    multiplier = np.where(tier < 0, PRICE_TIERS["budget"]["multiplier"],
                          np.where(tier > 0, PRICE_TIERS["luxury"]["multiplier"], 1.0))
    log_price = np.array([LOG_PRICE[c] for c in CATEGORY_NAMES])[cat] + rng.normal(0, 0.3, size=n)
    df = pd.DataFrame({"ad_id": [f"ad{i:05d}" for i in range(n)], "_cat": cat, "_product": product,
                       "_brand": brand, "_tier": tier, "_show_tier": rng.random(n) < 0.7})
    df["title"], df["description"] = _ad_texts(df, attributes, rng)
    df["category"] = np.asarray(CATEGORY_NAMES, dtype=object)[cat]
    df["advertiser_id"] = ["adv-" + BRAND_LIST[b][1].lower().replace(" & ", "-").replace(" ", "-") for b in brand]
    df["price"] = np.round(np.exp(log_price) * multiplier, 2)
    df["start_date"], df["end_date"] = _flights(spec, rng)
    df["_quality"] = rng.normal(0.0, CLICK.quality_sd, size=n)
    public = ["ad_id", "title", "description", "category", "advertiser_id", "price", "start_date", "end_date"]
    return df[public + [c for c in df.columns if c.startswith("_")]], attributes


def _flights(spec: GeneratorSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A fifth of the ads run on a flight window inside the period (ISO dates), the rest always (None)."""
    n = spec.n_ads
    start = np.full(n, None, dtype=object)
    end = np.full(n, None, dtype=object)
    for i in np.flatnonzero(rng.random(n) < 0.2):
        s = int(rng.integers(0, max(1, spec.n_days - 2)))
        e = int(min(spec.n_days - 1, s + rng.integers(2, max(3, spec.n_days))))
        start[i] = (spec.start + dt.timedelta(days=s)).isoformat()
        end[i] = (spec.start + dt.timedelta(days=e)).isoformat()
    return start, end


def _make_users(spec: GeneratorSpec, rng: np.random.Generator) -> Tastes:
    n, n_themes, n_styles = spec.n_users, len(THEME_NAMES), len(STYLE_NAMES)
    themes = _rank_rows(rng, n, n_themes) < (1 + (rng.random(n) < 0.5))[:, None]
    style_rank = _rank_rows(rng, n, n_styles)
    n_liked = (1 + (rng.random(n) < 0.5))[:, None]
    disliked = (style_rank == n_liked) & (rng.random(n) < 0.4)[:, None]
    attributes = (style_rank < n_liked).astype(np.int8) - disliked.astype(np.int8)
    price = rng.choice(TIERS, p=[0.35, 0.45, 0.20], size=n).astype(np.int8)
    theme_category = np.zeros((n_themes, len(CATEGORY_NAMES)))
    np.add.at(theme_category, (PRODUCT_THEME[PRODUCT_THEME >= 0], PRODUCT_CATEGORY[PRODUCT_THEME >= 0]), 1.0)
    implied = themes @ (theme_category / theme_category.sum(axis=1, keepdims=True))
    interest = (0.4 * rng.dirichlet(np.full(len(CATEGORY_NAMES), 0.3), size=n)
                + 0.6 * implied / implied.sum(axis=1, keepdims=True))
    brands = np.zeros((n, len(BRAND_LIST)), dtype=bool)
    fav_categories = _sample_rows(rng, interest.cumsum(axis=1), np.repeat(np.arange(n), 2))
    brands[np.repeat(np.arange(n), 2), _uniform_within(rng, fav_categories, BRAND_CATEGORY)] = True
    activity = np.exp(rng.normal(0, 1.0, size=n))
    return Tastes(themes=themes, attributes=attributes, price=price, brands=brands,
                  wants=_wanted_products(rng, themes, interest), interest=interest,
                  activity=activity / activity.sum(), bias=rng.normal(0, CLICK.user_bias_sd, size=n))


def _wanted_products(rng: np.random.Generator, themes: np.ndarray, interest: np.ndarray) -> np.ndarray:
    """Two products per user: 80% from one of their themes, the rest from a category they are interested in."""
    n = len(themes)
    users = np.repeat(np.arange(n), 2)
    # One of the user's themes, uniformly: the highest of random keys over their themes.
    theme = np.where(themes[users], rng.random((len(users), themes.shape[1])), -1.0).argmax(axis=1)
    themed = _uniform_within(rng, theme, np.where(PRODUCT_THEME >= 0, PRODUCT_THEME, themes.shape[1]))
    by_category = _uniform_within(rng, _sample_rows(rng, interest.cumsum(axis=1), users), PRODUCT_CATEGORY)
    wants = np.zeros((n, len(PRODUCT_LIST)), dtype=bool)
    wants[users, np.where(rng.random(len(users)) < 0.8, themed, by_category)] = True
    return wants


def click_logit(world: World, users: np.ndarray, ads: np.ndarray) -> np.ndarray:
    """The click model's logit for each impression of ad row ``ads[i]`` to user ``users[i]``."""
    t, a, w = world.users, world.ads, CLICK
    cat, theme = a["_cat"].to_numpy()[ads], PRODUCT_THEME[a["_product"].to_numpy()[ads]]
    attributes, tier, attitude = world.ad_attributes[ads], a["_tier"].to_numpy()[ads], t.price[users]
    return (w.base
            + w.theme * ((theme >= 0) & t.themes[users, theme.clip(0)])
            + w.liked_attribute * (attributes & (t.attributes[users] > 0)).sum(axis=1)
            + w.disliked_attribute * (attributes & (t.attributes[users] < 0)).sum(axis=1)
            + w.brand * t.brands[users, a["_brand"].to_numpy()[ads]]
            + w.wanted_product * t.wants[users, a["_product"].to_numpy()[ads]]
            + w.price_fit * ((attitude != 0) & (tier == attitude))
            + w.price_clash * ((attitude != 0) & (tier == -attitude))
            + w.category_interest * t.interest[users, cat]
            + a["_quality"].to_numpy()[ads] + t.bias[users])


def _show_ads(spec: GeneratorSpec, world: World, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Impressions: user, day, second and ad row; half to a category of the user's interest, half to any."""
    n_cats = len(CATEGORY_NAMES)
    n = max(1, int(spec.n_events * 0.80))
    users = rng.choice(spec.n_users, size=n, p=world.users.activity)
    days = rng.integers(0, spec.n_days, size=n)
    preferred = rng.random(n) < 0.5
    cats = np.where(preferred, _sample_rows(rng, world.users.interest.cumsum(axis=1), users),
                    rng.integers(0, n_cats, size=n))
    ad_cat = world.ads["_cat"].to_numpy()
    pick = rng.random(n)
    by_cat = np.argsort(ad_cat, kind="stable")
    cat_count = np.bincount(ad_cat, minlength=n_cats)
    cat_offset = np.concatenate([[0], np.cumsum(cat_count)[:-1]])
    ad_idx = by_cat[cat_offset[cats] + (pick * cat_count[cats]).astype(np.int64)]
    start, end = world.ads["start_date"], world.ads["end_date"]
    flight_lo = np.array([(dt.date.fromisoformat(s) - spec.start).days if s else -1 for s in start])
    flight_hi = np.array([(dt.date.fromisoformat(e) - spec.start).days if e else 10**6 for e in end])
    open_by_cat = [np.flatnonzero((ad_cat == c) & (flight_lo < 0)) for c in range(n_cats)]
    all_by_cat = [np.flatnonzero(ad_cat == c) for c in range(n_cats)]
    for i in np.flatnonzero((days < flight_lo[ad_idx]) | (days > flight_hi[ad_idx])):
        # an ad off its flight is not shown: show an open ad of the same category instead
        pool = open_by_cat[cats[i]] if len(open_by_cat[cats[i]]) else all_by_cat[cats[i]]
        ad_idx[i] = pool[int(pick[i] * len(pool))]
    return {"users": users, "days": days, "ads": ad_idx, "seconds": rng.integers(0, 86400 - 3600, size=n)}


def _user_lists(mask: np.ndarray) -> list[list[int]]:
    """Per row of a boolean matrix, the indices of its true columns."""
    rows, cols = np.nonzero(mask)
    return [list(c) for c in np.split(cols, np.searchsorted(rows, np.arange(1, len(mask))))]


def _price_words(attitude: int, phrase: str, u: float, v: float) -> str:
    """``phrase`` as a budget- or luxury-minded user may search it: with a price word before or after."""
    if attitude == 0 or u >= 0.5:
        return phrase
    tier = PRICE_TIERS["budget" if attitude < 0 else "luxury"]
    return f"{_pick(tier['prefix'], v)} {phrase}" if u < 0.25 else f"{phrase} {_pick(tier['suffix'], v)}"


def _query_texts(world: World, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Search texts that reveal each searcher's tastes, in users' words (see the module docstring)."""
    t = world.users
    themes, liked, wants, brands = (_user_lists(m) for m in (t.themes, t.attributes > 0, t.wants, t.brands))
    kinds = np.searchsorted(np.cumsum([0.35, 0.20, 0.20, 0.10, 0.15]), rng.random(len(users)), side="right")
    categories = _sample_rows(rng, t.interest.cumsum(axis=1), users)
    draws = rng.random((len(users), 5))
    out = np.empty(len(users), dtype=object)
    for i, (u, kind, d) in enumerate(zip(users, kinds, draws, strict=True)):
        product = PRODUCT_LIST[_pick(wants[u], d[1])][1]
        said = _pick((*product.said, product.name.lower()), d[2])
        if kind == 0:
            text = _pick(THEMES[THEME_NAMES[_pick(themes[u], d[1])]]["searches"], d[2])
        elif kind == 1:
            text = _price_words(t.price[u], said, d[3], d[4])
        elif kind == 2:
            text = _price_words(t.price[u], f"{_pick(STYLES[STYLE_NAMES[_pick(liked[u], d[0])]]['user'], d[4])} "
                                            f"{said}", d[3], d[4])
        elif kind == 3:
            text = BRAND_LIST[_pick(brands[u], d[1])][1].lower() + _pick(["", " sale", " reviews", " new in"], d[2])
        else:
            text = _price_words(t.price[u], _pick(CATEGORIES[CATEGORY_NAMES[categories[i]]]["queries"], d[2]),
                                d[3], d[4])
        out[i] = text
    return out


def _review_texts(world: World, users: np.ndarray, ads: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Reviews: praise or complaint about the product (by the ad's quality), then a remark from a taste."""
    t = world.users
    themes, liked, brands = (_user_lists(m) for m in (t.themes, t.attributes > 0, t.brands))
    titles = world.ads["title"].to_numpy(dtype=object)
    quality = world.ads["_quality"].to_numpy()
    draws = rng.random((len(users), 4))
    out = np.empty(len(users), dtype=object)
    for i, (u, a, d) in enumerate(zip(users, ads, draws, strict=True)):
        good = quality[a] > -0.2
        n = titles[a].split(" - ")[0].split(" | ")[0]
        kind = ("theme" if d[0] < 0.4 else "style" if d[0] < 0.7 else
                ("budget" if t.price[u] < 0 else "luxury") if d[0] < 0.85 and t.price[u] != 0 else "brand")
        x = (_pick(THEMES[THEME_NAMES[_pick(themes[u], d[1])]]["talk"], d[2]) if kind == "theme" else
             _pick(STYLES[STYLE_NAMES[_pick(liked[u], d[1])]]["user"], d[2]) if kind == "style" else
             BRAND_LIST[_pick(brands[u], d[1])][1] if kind == "brand" else "")
        remark = _pick((REVIEW_REMARK_GOOD if good else REVIEW_REMARK_BAD)[kind], d[3]).format(x=x)
        out[i] = f"{_pick(REVIEW_OPEN_GOOD if good else REVIEW_OPEN_BAD, d[3]).format(n=n)} {remark}"
    return out


def generate(spec: GeneratorSpec, out: str | Path) -> dict[str, int]:
    """Write the catalog and ``n_days`` of event files under ``out``; returns counts by kind."""
    world = sample_world(spec)
    rng = np.random.default_rng([spec.seed, 1])
    out = Path(out)
    events = _events(spec, world, rng)
    counts = {"ads": len(world.ads), "events": len(events), "bad_events": 0, "bad_ads": 0}
    counts["bad_ads"] = _write_catalog(spec, world.ads, out / "ads" / f"date={spec.start.isoformat()}")
    for day, day_df in events.groupby("_day", sort=True):
        d = spec.start + dt.timedelta(days=int(day))
        records = day_df[["event_id", "user_id", "ad_id", "event_type", "event_time", "text", "value"]]
        bad = _bad_event_lines(spec, d, records, rng) if spec.bad_rows_per_day else []
        counts["bad_events"] += len(bad)
        _write_events(spec, records, bad, out / "events" / f"date={d.isoformat()}")
    log.info("generated %d events (%d deliberately bad) over %d days, %d ads, %d users under %s",
             counts["events"] + counts["bad_events"], counts["bad_events"], spec.n_days, len(world.ads),
             spec.n_users, out)
    return counts


def _events(spec: GeneratorSpec, world: World, rng: np.random.Generator) -> pd.DataFrame:
    """All good events of the period, in time order, with ids and mixed time formats; ``_day`` for grouping."""
    imp = _show_ads(spec, world, rng)
    users, ad_idx, n_imp = imp["users"], imp["ads"], len(imp["users"])
    clicked = rng.random(n_imp) < 1.0 / (1.0 + np.exp(-click_logit(world, users, ad_idx)))
    converted = clicked & (rng.random(n_imp) < 0.12)
    reviewed = converted & (rng.random(n_imp) < 0.5)
    click_delay = rng.integers(1, 300, size=n_imp)
    conv_delay = click_delay + rng.integers(60, 1800, size=n_imp)
    review_text = np.full(n_imp, None, dtype=object)
    review_text[reviewed] = _review_texts(world, users[reviewed], ad_idx[reviewed], rng)
    ad_ids = world.ads["ad_id"].to_numpy(dtype=object)
    price = world.ads["price"].to_numpy()

    def frame(kind: str, mask: np.ndarray, delay: np.ndarray, text: np.ndarray | None = None,
              value: np.ndarray | None = None) -> pd.DataFrame:
        idx = np.flatnonzero(mask)
        return pd.DataFrame({
            "user_id": np.char.add("u", users[idx].astype(str)).astype(object), "ad_id": ad_ids[ad_idx[idx]],
            "event_type": kind, "_day": imp["days"][idx], "_sec": imp["seconds"][idx] + delay[idx],
            "text": text[idx] if text is not None else None,
            "value": value[idx] if value is not None else np.nan})

    n_q = max(1, int(spec.n_events * 0.05))
    q_users = rng.choice(spec.n_users, size=n_q, p=world.users.activity)
    queries = pd.DataFrame({
        "user_id": np.char.add("u", q_users.astype(str)).astype(object), "ad_id": None, "event_type": "query",
        "_day": rng.integers(0, spec.n_days, size=n_q), "_sec": rng.integers(0, 86400, size=n_q),
        "text": _query_texts(world, q_users, rng), "value": np.nan})
    events = pd.concat([frame("impression", np.ones(n_imp, bool), np.zeros(n_imp, dtype=np.int64)),
                        frame("click", clicked, click_delay),
                        frame("conversion", converted, conv_delay, value=price[ad_idx]),
                        frame("review", reviewed, conv_delay + 86400 // 4, text=review_text),
                        queries], ignore_index=True)
    return _stamp(spec, events)


def _stamp(spec: GeneratorSpec, events: pd.DataFrame) -> pd.DataFrame:
    """Sort by time, number the events and write their times, as real log shippers do, in mixed formats."""
    events["_sec"] = events["_sec"].clip(upper=86399)
    events = events.sort_values(["_day", "_sec"], kind="stable").reset_index(drop=True)
    events["event_id"] = [f"ev{i:09d}" for i in range(len(events))]
    base = dt.datetime.combine(spec.start, dt.time(), tzinfo=dt.timezone.utc)
    epoch = base.timestamp() + events["_day"].to_numpy() * 86400 + events["_sec"].to_numpy()
    # ISO-8601 strings and epoch seconds
    iso = pd.to_datetime(epoch, unit="s", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ")
    events["event_time"] = np.where(np.arange(len(events)) % 5 == 0, epoch.astype(np.int64).astype(str), iso)
    events["value"] = events["value"].round(2)
    return events


def _bad_event_lines(spec: GeneratorSpec, day: dt.date, records: pd.DataFrame,
                     rng: np.random.Generator) -> list[dict | str]:
    """Deliberately bad or awkward rows: each exercises one rejection reason or cleaning rule."""
    ts = f"{day.isoformat()}T12:00:00Z"
    tag = day.strftime("%Y%m%d")
    some = records.iloc[int(rng.integers(len(records)))].to_dict()
    rows: list[dict | str] = [
        '{"event_id": "broken-' + tag + '", "user_id": ',  # truncated JSON
        {"event_id": f"nouser-{tag}", "user_id": None, "ad_id": some["ad_id"], "event_type": "click",
         "event_time": ts},
        {"event_id": f"badtype-{tag}", "user_id": "u1", "ad_id": some["ad_id"], "event_type": "hover",
         "event_time": ts},
        {"event_id": f"unknownad-{tag}", "user_id": "u1", "ad_id": "ad-does-not-exist",
         "event_type": "impression", "event_time": ts},
        {"event_id": f"future-{tag}", "user_id": "u1", "ad_id": some["ad_id"], "event_type": "click",
         "event_time": f"{(day + dt.timedelta(days=3)).isoformat()}T00:00:00Z"},
        {"event_id": f"pii-{tag}", "user_id": "u2", "ad_id": None, "event_type": "query",
         "event_time": ts, "text": "<b>call me</b> at 555-123-4567 or mail jane.doe@example.com"},
        {**{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in some.items()}},  # duplicate
    ]
    return rows[: spec.bad_rows_per_day]


def _write_events(spec: GeneratorSpec, records: pd.DataFrame, bad: list[dict | str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if spec.fmt == "json":
        body = records.to_json(orient="records", lines=True, force_ascii=False)
        extra = "".join((b if isinstance(b, str) else json.dumps(b)) + "\n" for b in bad)
        (folder / "events-0.jsonl").write_text(body + extra)
        return
    dicts = [b for b in bad if isinstance(b, dict)]  # a broken JSON line has no Parquet/CSV form
    full = pd.concat([records, pd.DataFrame(dicts, columns=records.columns)], ignore_index=True)
    full = full.astype({"value": "float64"}).astype({c: "object" for c in full.columns if c != "value"})
    if spec.fmt == "parquet":
        full.to_parquet(folder / "events-0.parquet", index=False)
    else:
        full.to_csv(folder / "events-0.csv", index=False)


def _write_catalog(spec: GeneratorSpec, ads: pd.DataFrame, folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    public = ads.drop(columns=[c for c in ads.columns if c.startswith("_")])
    bad = []
    if spec.bad_rows_per_day:
        first = public.iloc[0].to_dict()
        bad = [
            {**first, "ad_id": "ad-negative-price", "price": -5.0},
            {**first, "ad_id": "ad-no-title", "title": "   "},
            {**first, "title": first["title"] + " (duplicate listing)"},  # duplicate ad_id
        ]
    full = pd.concat([public, pd.DataFrame(bad, columns=public.columns)], ignore_index=True) if bad else public
    if spec.fmt == "json":
        (folder / "ads-0.jsonl").write_text(full.to_json(orient="records", lines=True, force_ascii=False))
    elif spec.fmt == "parquet":
        full.astype({c: "object" for c in full.columns if c != "price"}).to_parquet(folder / "ads-0.parquet",
                                                                                     index=False)
    else:
        full.to_csv(folder / "ads-0.csv", index=False)
    return len(bad)
