"""Sample ad-platform logs for the demo, the tests and scale benchmarks (numpy, reproducible by seed).

Users have latent interests over categories; ads have realistic titles and descriptions per category and
a latent quality; a user clicks an ad with a probability that rises with their interest in its category
and the ad's quality, so a model can learn from history text which ads fit whom. Queries and reviews
follow the same interests. A few deliberately bad rows per day exercise the ETL's rejection paths.

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

log = logging.getLogger(__name__)

CATEGORIES: dict[str, dict[str, list[str]]] = {
    "travel": {
        "nouns": ["flights to Lisbon", "beach resort in Crete", "city break in Prague", "ski chalet in the Alps",
                  "rail pass for Europe", "cruise in the Caribbean", "safari lodge in Kenya", "road trip rental"],
        "adjs": ["last-minute", "all-inclusive", "budget", "luxury", "family-friendly", "weekend"],
        "benefits": ["free cancellation", "breakfast included", "no booking fees", "price match guarantee"],
        "queries": ["cheap flights", "hotel deals", "summer holiday", "weekend getaway", "travel insurance"],
    },
    "electronics": {
        "nouns": ["noise-cancelling headphones", "4K smart TV", "gaming laptop", "wireless earbuds",
                  "mirrorless camera", "smartwatch", "portable speaker", "USB-C charger"],
        "adjs": ["next-gen", "refurbished", "ultra-slim", "pro", "compact", "high-fidelity"],
        "benefits": ["two-year warranty", "free next-day delivery", "trade-in bonus", "30-day returns"],
        "queries": ["best headphones", "laptop deals", "new phone", "tv sale", "camera lens"],
    },
    "fashion": {
        "nouns": ["linen summer dress", "leather ankle boots", "wool overcoat", "slim-fit chinos",
                  "silk scarf", "denim jacket", "running sneakers", "cashmere sweater"],
        "adjs": ["handmade", "sustainable", "designer", "vintage", "classic", "limited-edition"],
        "benefits": ["free returns", "new season styles", "members save 20%", "organic cotton"],
        "queries": ["summer dress", "winter coat", "leather boots", "new sneakers", "designer sale"],
    },
    "fitness": {
        "nouns": ["adjustable dumbbells", "yoga mat", "gym membership", "rowing machine",
                  "protein powder", "running watch", "resistance bands", "spin bike"],
        "adjs": ["home", "professional", "beginner", "high-intensity", "eco", "foldable"],
        "benefits": ["first month free", "coach-designed plans", "lifetime warranty", "quiet operation"],
        "queries": ["home gym", "yoga classes", "running plan", "protein shake", "weight loss"],
    },
    "finance": {
        "nouns": ["cashback credit card", "high-yield savings account", "index fund portfolio",
                  "mortgage refinance", "budgeting app", "travel rewards card", "term life insurance"],
        "adjs": ["no-fee", "low-rate", "award-winning", "digital", "flexible", "secure"],
        "benefits": ["0% APR for 12 months", "FDIC insured", "no minimum balance", "instant approval"],
        "queries": ["savings rates", "credit card rewards", "mortgage rates", "investing app", "insurance quote"],
    },
    "gaming": {
        "nouns": ["open-world RPG", "mechanical keyboard", "gaming headset", "console bundle",
                  "racing wheel", "strategy game", "VR headset", "game subscription"],
        "adjs": ["epic", "competitive", "co-op", "award-winning", "next-gen", "indie"],
        "benefits": ["pre-order bonus", "free DLC", "cross-play", "limited stock"],
        "queries": ["new rpg", "gaming keyboard", "console deals", "vr games", "multiplayer games"],
    },
    "home": {
        "nouns": ["robot vacuum", "memory foam mattress", "espresso machine", "air purifier",
                  "garden furniture set", "smart thermostat", "cast iron skillet", "linen bedding"],
        "adjs": ["energy-saving", "Scandinavian", "premium", "smart", "space-saving", "handcrafted"],
        "benefits": ["100-night trial", "free installation", "five-year guarantee", "eco materials"],
        "queries": ["robot vacuum", "new mattress", "coffee machine", "garden set", "smart home"],
    },
    "food": {
        "nouns": ["meal-kit delivery", "artisan coffee beans", "sushi restaurant", "organic veg box",
                  "pizza delivery", "wine club", "vegan cookbook", "bakery subscription"],
        "adjs": ["fresh", "local", "gourmet", "plant-based", "family-size", "award-winning"],
        "benefits": ["first box half price", "free delivery", "chef-designed recipes", "seasonal menu"],
        "queries": ["meal kits", "vegan recipes", "coffee subscription", "pizza near me", "wine deals"],
    },
    "auto": {
        "nouns": ["electric SUV", "hybrid hatchback", "all-season tyres", "car insurance",
                  "dash cam", "EV home charger", "roof box", "car detailing service"],
        "adjs": ["certified", "fuel-efficient", "rugged", "family", "sporty", "low-emission"],
        "benefits": ["test drive today", "0% finance", "free fitting", "roadside assistance"],
        "queries": ["electric car", "car insurance", "new tyres", "ev charger", "hybrid suv"],
    },
    "beauty": {
        "nouns": ["vitamin C serum", "hair dryer", "fragrance for men", "mineral sunscreen",
                  "skincare set", "electric toothbrush", "nail kit", "night cream"],
        "adjs": ["dermatologist-tested", "vegan", "cruelty-free", "luxury", "gentle", "clinical"],
        "benefits": ["free samples", "visible results in 2 weeks", "refillable packaging", "gift wrap"],
        "queries": ["skincare routine", "best serum", "perfume gift", "sunscreen", "hair dryer"],
    },
    "books": {
        "nouns": ["crime thriller", "fantasy saga", "audiobook subscription", "history biography",
                  "cookbook", "sci-fi novel", "e-reader", "children's picture book"],
        "adjs": ["bestselling", "award-winning", "illustrated", "new", "classic", "signed"],
        "benefits": ["first audiobook free", "free shipping", "author event tickets", "book club picks"],
        "queries": ["new thriller", "fantasy books", "audiobooks", "e-reader", "biography"],
    },
    "pets": {
        "nouns": ["grain-free dog food", "cat tree", "pet insurance", "dog walking service",
                  "aquarium kit", "orthopedic dog bed", "GPS pet tracker", "cat litter subscription"],
        "adjs": ["vet-approved", "natural", "durable", "premium", "eco", "smart"],
        "benefits": ["first bag free", "24/7 vet chat", "free delivery", "satisfaction guarantee"],
        "queries": ["dog food", "cat toys", "pet insurance", "dog walker", "puppy training"],
    },
}
_TITLE_SUFFIX = ["", " - save 20%", " - new arrivals", " - limited offer", " | shop now", " - free delivery"]
_REVIEW_GOOD = ["Loved the {n}, great quality.", "The {n} exceeded my expectations!", "Would buy the {n} again."]
_REVIEW_BAD = ["The {n} was disappointing.", "Returned the {n}, not as described.", "The {n} broke after a week."]


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


def _pick(rng: np.random.Generator, options: list[str], size: int) -> np.ndarray:
    return np.asarray(options, dtype=object)[rng.integers(len(options), size=size)]


def make_catalog(spec: GeneratorSpec, rng: np.random.Generator) -> pd.DataFrame:
    cats = list(CATEGORIES)
    n = spec.n_ads
    cat_idx = np.arange(n) % len(cats)  # every category has ads
    rng.shuffle(cat_idx)
    rows = []
    for i in range(n):
        c = cats[cat_idx[i]]
        v = CATEGORIES[c]
        noun = v["nouns"][rng.integers(len(v["nouns"]))]
        adj = v["adjs"][rng.integers(len(v["adjs"]))]
        benefit = v["benefits"][rng.integers(len(v["benefits"]))]
        title = f"{adj.capitalize()} {noun}{_TITLE_SUFFIX[rng.integers(len(_TITLE_SUFFIX))]}"
        description = f"Discover our {adj} {noun}: {benefit}. Perfect if you love {c}."
        rows.append((f"ad{i:05d}", title, description, c, f"adv-{c}-{rng.integers(4)}",
                     round(float(np.exp(rng.normal(3.5, 0.8))), 2)))
    df = pd.DataFrame(rows, columns=["ad_id", "title", "description", "category", "advertiser_id", "price"])
    # A fifth of the ads run on a flight window inside the period.
    start = np.full(n, None, dtype=object)
    end = np.full(n, None, dtype=object)
    flights = rng.random(n) < 0.2
    for i in np.flatnonzero(flights):
        s = int(rng.integers(0, max(1, spec.n_days - 2)))
        e = int(min(spec.n_days - 1, s + rng.integers(2, max(3, spec.n_days))))
        start[i] = (spec.start + dt.timedelta(days=s)).isoformat()
        end[i] = (spec.start + dt.timedelta(days=e)).isoformat()
    df["start_date"], df["end_date"] = start, end
    df["_quality"] = rng.normal(0.0, 0.6, size=n)
    df["_cat"] = cat_idx
    return df


def _sample_rows(rng: np.random.Generator, cum_probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each index in ``rows``, a category drawn from that row of the cumulative matrix."""
    u = rng.random(len(rows))[:, None]
    return (cum_probs[rows] < u).sum(axis=1).clip(max=cum_probs.shape[1] - 1)


def generate(spec: GeneratorSpec, out: str | Path) -> dict[str, int]:
    """Write the catalog and ``n_days`` of event files under ``out``; returns counts by kind."""
    rng = np.random.default_rng(spec.seed)
    out = Path(out)
    ads = make_catalog(spec, rng)
    n_cats = len(CATEGORIES)
    cat_names = np.asarray(list(CATEGORIES), dtype=object)

    interest = rng.dirichlet(np.full(n_cats, 0.3), size=spec.n_users)
    cum_interest = interest.cumsum(axis=1)
    activity = np.exp(rng.normal(0, 1.0, size=spec.n_users))
    activity /= activity.sum()
    user_bias = rng.normal(0, 0.5, size=spec.n_users)

    ad_cat = ads["_cat"].to_numpy()
    quality = ads["_quality"].to_numpy()
    flight_lo = np.array([(dt.date.fromisoformat(s) - spec.start).days if s else -1 for s in ads["start_date"]])
    flight_hi = np.array([(dt.date.fromisoformat(e) - spec.start).days if e else 10**6 for e in ads["end_date"]])
    open_ads_by_cat = [np.flatnonzero((ad_cat == c) & (flight_lo < 0)) for c in range(n_cats)]
    all_by_cat = [np.flatnonzero(ad_cat == c) for c in range(n_cats)]

    n_imp = max(1, int(spec.n_events * 0.80))
    users = rng.choice(spec.n_users, size=n_imp, p=activity)
    days = rng.integers(0, spec.n_days, size=n_imp)
    preferred = rng.random(n_imp) < 0.5
    cats = np.where(preferred, _sample_rows(rng, cum_interest, users), rng.integers(0, n_cats, size=n_imp))
    pick = rng.random(n_imp)
    by_cat = np.argsort(ad_cat, kind="stable")
    cat_count = np.bincount(ad_cat, minlength=n_cats)
    cat_offset = np.concatenate([[0], np.cumsum(cat_count)[:-1]])
    ad_idx = by_cat[cat_offset[cats] + (pick * cat_count[cats]).astype(np.int64)]
    outside = (days < flight_lo[ad_idx]) | (days > flight_hi[ad_idx])
    for i in np.flatnonzero(outside):  # an ad off its flight is not shown: show an open ad instead
        pool = open_ads_by_cat[cats[i]] if len(open_ads_by_cat[cats[i]]) else all_by_cat[cats[i]]
        ad_idx[i] = pool[int(pick[i] * len(pool))]
    logit = -3.0 + 4.0 * interest[users, ad_cat[ad_idx]] + quality[ad_idx] + user_bias[users]
    clicked = rng.random(n_imp) < 1.0 / (1.0 + np.exp(-logit))
    seconds = rng.integers(0, 86400 - 3600, size=n_imp)
    converted = clicked & (rng.random(n_imp) < 0.12)
    reviewed = converted & (rng.random(n_imp) < 0.4)

    n_q = max(1, int(spec.n_events * 0.04))
    q_users = rng.choice(spec.n_users, size=n_q, p=activity)
    q_cats = _sample_rows(rng, cum_interest, q_users)
    q_days = rng.integers(0, spec.n_days, size=n_q)
    q_text = np.array([CATEGORIES[cat_names[c]]["queries"][rng.integers(5)] for c in q_cats], dtype=object)

    ad_ids = ads["ad_id"].to_numpy(dtype=object)
    price = ads["price"].to_numpy()
    titles = ads["title"].to_numpy(dtype=object)
    frames = []

    def frame(kind: str, mask: np.ndarray, delay: np.ndarray, text: np.ndarray | None = None,
              value: np.ndarray | None = None) -> pd.DataFrame:
        idx = np.flatnonzero(mask)
        return pd.DataFrame({
            "user_id": np.char.add("u", users[idx].astype(str)).astype(object),
            "ad_id": ad_ids[ad_idx[idx]],
            "event_type": kind,
            "_day": days[idx],
            "_sec": seconds[idx] + delay[idx],
            "text": text[idx] if text is not None else None,
            "value": value[idx] if value is not None else np.nan,
        })

    zero = np.zeros(n_imp, dtype=np.int64)
    click_delay = rng.integers(1, 300, size=n_imp)
    conv_delay = click_delay + rng.integers(60, 1800, size=n_imp)
    review_text = np.full(n_imp, None, dtype=object)
    for i in np.flatnonzero(reviewed):
        template = (_REVIEW_GOOD if quality[ad_idx[i]] > -0.2 else _REVIEW_BAD)[rng.integers(3)]
        review_text[i] = template.format(n=titles[ad_idx[i]].split(" - ")[0].split(" | ")[0].lower())
    frames.append(frame("impression", np.ones(n_imp, bool), zero))
    frames.append(frame("click", clicked, click_delay))
    frames.append(frame("conversion", converted, conv_delay, value=price[ad_idx]))
    frames.append(frame("review", reviewed, conv_delay + 86400 // 4, text=review_text))
    frames.append(pd.DataFrame({
        "user_id": np.char.add("u", q_users.astype(str)).astype(object), "ad_id": None, "event_type": "query",
        "_day": q_days, "_sec": rng.integers(0, 86400, size=n_q), "text": q_text, "value": np.nan}))
    events = pd.concat(frames, ignore_index=True)
    events["_sec"] = events["_sec"].clip(upper=86399)
    events = events.sort_values(["_day", "_sec"], kind="stable").reset_index(drop=True)
    events["event_id"] = [f"ev{i:09d}" for i in range(len(events))]
    base = dt.datetime.combine(spec.start, dt.time(), tzinfo=dt.timezone.utc)
    epoch = base.timestamp() + events["_day"].to_numpy() * 86400 + events["_sec"].to_numpy()
    # Mixed time formats, as real log shippers produce: ISO-8601 strings and epoch seconds.
    iso = pd.to_datetime(epoch, unit="s", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ")
    events["event_time"] = np.where(np.arange(len(events)) % 5 == 0, epoch.astype(np.int64).astype(str), iso)
    events["value"] = events["value"].round(2)

    counts = {"ads": len(ads), "events": len(events), "bad_events": 0, "bad_ads": 0}
    counts["bad_ads"] = _write_catalog(spec, ads, out / "ads" / f"date={spec.start.isoformat()}")
    for day, day_df in events.groupby("_day", sort=True):
        d = spec.start + dt.timedelta(days=int(day))
        records = day_df[["event_id", "user_id", "ad_id", "event_type", "event_time", "text", "value"]]
        bad = _bad_event_lines(spec, d, records, rng) if spec.bad_rows_per_day else []
        counts["bad_events"] += len(bad)
        _write_events(spec, records, bad, out / "events" / f"date={d.isoformat()}")
    log.info("generated %d events (%d deliberately bad) over %d days, %d ads, %d users under %s",
             counts["events"] + counts["bad_events"], counts["bad_events"], spec.n_days, len(ads),
             spec.n_users, out)
    return counts


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
    public = ads.drop(columns=["_quality", "_cat"])
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
