"""The sample-log generator: clicks follow tastes below the category, text reveals them, output is reproducible.

No Spark: the landing files are parsed here as plain JSON Lines, and clicks are paired with the impression
they follow the way the ETL pairs them (the latest earlier impression of the same ad to the same user).
The users' latent tastes come from ``sample_world``, the same world ``generate`` draws its events from.

Expected odds ratios come from the click model's coefficients (written here by hand, as in the module
docstring), not from the generated data: a term ``w`` on the logit multiplies the odds by ``exp(w)`` for
one user and ad; pooled over users and ads whose other terms vary with variance ``s2`` (ad quality 0.25,
user bias 0.25, the other tastes about 0.5-1), the pooled odds ratio shrinks to about
``exp(w / sqrt(1 + 0.346 * s2))`` (Zeger, Liang & Albert 1988), i.e. ``exp(0.8 w)`` to ``exp(0.9 w)``. The
tests accept ``exp(0.6 w)`` .. ``exp(1.1 w)``: wide enough for sampling noise at 32,000 impressions (the
log odds ratio's standard error is 0.05-0.1), narrow enough to fail if a term were missing or halved.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adrec_spark.samples.generator import (
    BRAND_LIST,
    PRODUCT_LIST,
    PRODUCT_THEME,
    STYLE_NAMES,
    THEME_NAMES,
    GeneratorSpec,
    click_logit,
    generate,
    sample_world,
)
from adrec_spark.samples.vocabulary import STYLES, THEMES

SPEC = GeneratorSpec(seed=11)  # the demo's size: 400 users, 300 ads, 40,000 events over 14 days
BAD_IDS = ("nouser-", "badtype-", "unknownad-", "future-", "pii-")


def _lines(folder: Path, pattern: str) -> list[str]:
    return [line for f in sorted(folder.glob(pattern)) for line in f.read_text().splitlines() if line.strip()]


def _good_events(root: Path) -> list[dict]:
    """The generated events, in file (time) order, without the deliberately bad rows."""
    out = []
    for line in _lines(root / "events", "date=*/events-0.jsonl"):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row["event_id"].startswith("ev"):  # the bad rows have ids of their own
            out.append(row)
    seen: set[str] = set()
    return [r for r in out if not (r["event_id"] in seen or seen.add(r["event_id"]))]  # the planted duplicate


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    generate(SPEC, root)
    return root, _good_events(root), sample_world(SPEC)


@pytest.fixture(scope="module")
def impressions(logs) -> pd.DataFrame:
    """One row per impression: user row, ad row, category, clicked, and which of the user's tastes it meets."""
    _, events, world = logs
    ad_row = {a: i for i, a in enumerate(world.ads["ad_id"])}
    last: dict[tuple[str, str], int] = {}
    rows: list[list[int]] = []
    for e in events:
        key = (e["user_id"], e["ad_id"])
        if e["event_type"] == "impression":
            last[key] = len(rows)
            rows.append([int(e["user_id"][1:]), ad_row[e["ad_id"]], 0])
        elif e["event_type"] == "click":
            rows[last[key]][2] = 1
    df = pd.DataFrame(rows, columns=["user", "ad", "clicked"])
    t, u, a = world.users, df["user"].to_numpy(), df["ad"].to_numpy()
    product = world.ads["_product"].to_numpy()[a]
    theme = PRODUCT_THEME[product]
    attributes = world.ad_attributes[a]
    tier, attitude = world.ads["_tier"].to_numpy()[a], t.price[u]
    return df.assign(
        category=world.ads["_cat"].to_numpy()[a],
        theme=(theme >= 0) & t.themes[u, theme.clip(0)],
        # a theme the user does not have: the next one in THEME_NAMES after one of theirs
        decoy=(theme >= 0) & np.roll(t.themes, 1, axis=1)[u, theme.clip(0)] & ~t.themes[u, theme.clip(0)],
        liked=(attributes & (t.attributes[u] > 0)).sum(axis=1),
        disliked=(attributes & (t.attributes[u] < 0)).sum(axis=1),
        brand=t.brands[u, world.ads["_brand"].to_numpy()[a]],
        wanted=t.wants[u, product],
        fit=(attitude != 0) & (tier == attitude),
        clash=(attitude != 0) & (tier == -attitude),
        minded=attitude != 0,
        mid_tier=tier == 0)


def mantel_haenszel(df: pd.DataFrame, exposed: pd.Series, strata: list[str]) -> tuple[float, float]:
    """The Mantel-Haenszel odds ratio of a click for ``exposed`` rows against the others, within ``strata``,
    and the standard error of its log (Woolf's, from the pooled table: an approximation good enough for a
    tolerance)."""
    d = df.assign(_x=exposed.to_numpy(), _y=df["clicked"] == 1)
    cells = d.groupby(strata).apply(lambda g: pd.Series({
        "a": (g["_x"] & g["_y"]).sum(), "b": (g["_x"] & ~g["_y"]).sum(),
        "c": (~g["_x"] & g["_y"]).sum(), "d": (~g["_x"] & ~g["_y"]).sum()}), include_groups=False)
    n = cells.sum(axis=1)
    ratio = (cells["a"] * cells["d"] / n).sum() / (cells["b"] * cells["c"] / n).sum()
    return float(ratio), float(np.sqrt((1.0 / cells.sum()).sum()))


def assert_odds_ratio(df: pd.DataFrame, exposed: pd.Series, strata: list[str], weight: float) -> None:
    """The pooled odds ratio lies in ``exp(0.6 w) .. exp(1.1 w)`` (see the module docstring), widened by 2.5
    standard errors of sampling noise."""
    ratio, se = mantel_haenszel(df, exposed, strata)
    lo, hi = sorted((0.6 * weight, 1.1 * weight))
    assert lo - 2.5 * se < math.log(ratio) < hi + 2.5 * se, (weight, ratio, se)


def test_clicks_follow_themes_within_a_category(impressions) -> None:
    """Within one category (the platform shows ads uniformly within it), ads of the user's theme get clicked
    far more: coefficient 1.8, odds ratio about exp(0.85 * 1.8) = 4.6. Products the user shops for (+1.5,
    mostly from their themes) are left out so that the ratio is the theme's alone."""
    df = impressions[~impressions["wanted"]]
    assert_odds_ratio(df, df["theme"], ["category"], 1.8)
    matched, other = df[df["theme"]], df[~df["theme"]]
    assert len(matched) > 2000 and matched["clicked"].mean() > 2.5 * other["clicked"].mean()


def test_an_unrelated_theme_changes_nothing(impressions) -> None:
    """The control: among ads not of the user's themes, one particular other theme has no effect."""
    df = impressions[~impressions["theme"] & ~impressions["wanted"]]
    ratio, se = mantel_haenszel(df, df["decoy"], ["category"])
    assert abs(math.log(ratio)) < 2.5 * se, (ratio, se)


@pytest.mark.parametrize(("taste", "weight"), [
    ("liked", 1.0), ("disliked", -1.2), ("brand", 1.0), ("wanted", 1.5), ("fit", 0.8), ("clash", -1.0)])
def test_clicks_follow_attributes_brands_products_and_price(impressions, taste, weight) -> None:
    """Each taste against ads that meet none of its kind, within a category and theme match: one liked or
    disliked attribute against none, a favourite brand against another, a product the user shops for against
    another, a price tier that fits (or clashes with) a budget- or luxury-minded user against a mid tier."""
    df = impressions
    if taste in ("liked", "disliked"):
        other = "disliked" if taste == "liked" else "liked"
        df = df[(df[other] == 0) & (df[taste] <= 1)]
        exposed = df[taste] == 1
    elif taste in ("fit", "clash"):
        df = df[df["minded"] & (df[taste] | df["mid_tier"])]
        exposed = df[taste]
    else:
        exposed = df[taste]
    assert_odds_ratio(df, exposed, ["category", "theme"], weight)


def test_the_category_is_only_a_coarse_proxy(logs, impressions) -> None:
    """The user's interest in the ad's category (weight 1.0 on a 0..1 scale, and it shapes which ads are
    shown) ranks the clicks barely better than chance; the tastes below the category rank them well."""
    from sklearn.metrics import roc_auc_score

    _, _, world = logs
    u, a = impressions["user"].to_numpy(), impressions["ad"].to_numpy()
    by_category = roc_auc_score(impressions["clicked"], world.users.interest[u, impressions["category"]])
    by_tastes = roc_auc_score(impressions["clicked"], click_logit(world, u, a))
    assert by_category < 0.65 and by_tastes > by_category + 0.15, (by_category, by_tastes)


def _lexicon(world, user: int) -> list[str]:
    """A user's taste words as users write them: their themes' searches and review phrases, their liked
    attributes' words, their favourite brands, how they name the products they shop for."""
    t = world.users
    words = [w for k in np.flatnonzero(t.themes[user])
             for w in THEMES[THEME_NAMES[k]]["searches"] + THEMES[THEME_NAMES[k]]["talk"]]
    words += [w for k in np.flatnonzero(t.attributes[user] > 0) for w in STYLES[STYLE_NAMES[k]]["user"]]
    words += [BRAND_LIST[k][1] for k in np.flatnonzero(t.brands[user])]
    words += [w for k in np.flatnonzero(t.wants[user]) for w in (*PRODUCT_LIST[k][1].said, PRODUCT_LIST[k][1].name)]
    return words


def _texts_by_user(events: list[dict]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for e in events:
        if e["event_type"] in ("query", "review") and e.get("text"):
            out[int(e["user_id"][1:])].append(e["text"].lower())
    return out


def test_searches_and_reviews_reveal_the_users_tastes(logs) -> None:
    """85% of searches and about 85% of review remarks name one of the writer's tastes (the docstring's
    mix); another user's texts name them only when the two share a taste, a few percent per kind."""
    _, events, world = logs
    texts = _texts_by_user(events)
    users = [u for u, ts in texts.items() if len(ts) >= 4]
    own, others = [], []
    rng = np.random.default_rng(0)
    for u in users:
        pattern = re.compile(r"\b(?:" + "|".join(re.escape(w.lower()) for w in _lexicon(world, u)) + r")\b")
        own.append(np.mean([bool(pattern.search(x)) for x in texts[u]]))
        strangers = rng.choice([v for v in users if v != u], size=20, replace=False)
        others.append(np.mean([bool(pattern.search(x)) for v in strangers for x in texts[v]]))
    assert len(users) > 150
    assert np.mean(own) > 0.75, np.mean(own)
    assert np.mean(others) < 0.25 and np.mean(own) > 3 * np.mean(others), (np.mean(own), np.mean(others))


def test_users_name_attributes_partly_in_their_own_words(logs) -> None:
    """A searcher's attribute words are the ads' words only in part ("sustainable" in both, "low waste"
    only in searches): exact matching finds some, not all."""
    _, events, world = logs
    liked = world.users.attributes > 0
    hits = exact = 0
    for e in events:
        if e["event_type"] != "query":
            continue
        text = e["text"].lower()
        for k in np.flatnonzero(liked[int(e["user_id"][1:])]):
            style = STYLES[STYLE_NAMES[k]]
            if any(re.search(rf"\b{re.escape(w)}\b", text) for w in style["user"]):
                hits += 1
                exact += any(re.search(rf"\b{re.escape(w.lower())}\b", text) for w in style["ad"])
    assert hits > 300
    assert 0.1 < exact / hits < 0.7, exact / hits


def test_ad_texts_carry_brand_attribute_and_theme_words(logs) -> None:
    _, _, world = logs
    ads = world.ads
    for i, row in enumerate(ads.to_dict("records")):
        product, title = PRODUCT_LIST[row["_product"]][1], row["title"]
        text = f"{title} | {row['description']}"
        assert BRAND_LIST[row["_brand"]][1] in title and product.name in title, title
        for k in np.flatnonzero(world.ad_attributes[i]):
            assert any(w in title for w in STYLES[STYLE_NAMES[k]]["ad"]), (title, STYLE_NAMES[k])
        if product.theme:
            assert any(tag in text for tag in THEMES[product.theme]["tagline"]), text
    assert set(ads["category"]) == set(row[0] for row in PRODUCT_LIST)


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path) -> None:
    spec = GeneratorSpec(n_users=30, n_ads=24, n_events=1500, n_days=3, seed=5)
    for name, s in (("a", spec), ("b", spec), ("c", GeneratorSpec(**{**spec.__dict__, "seed": 6}))):
        generate(s, tmp_path / name)

    def files(name: str) -> dict[str, bytes]:
        root = tmp_path / name
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert files("a") == files("b")
    assert files("a").keys() == files("c").keys() and files("a") != files("c")


def test_every_day_has_its_deliberately_bad_rows(logs) -> None:
    root, _, _ = logs
    for day in range(SPEC.n_days):
        d = SPEC.start + dt.timedelta(days=day)
        lines = _lines(root / "events" / f"date={d.isoformat()}", "*.jsonl")
        broken = [line for line in lines if line.startswith('{"event_id": "broken-')]
        assert len(broken) == 1
        with pytest.raises(ValueError):
            json.loads(broken[0])
        rows = [json.loads(line) for line in lines if line not in broken]
        ids = [r["event_id"] for r in rows]
        tag = d.strftime("%Y%m%d")
        assert all(f"{prefix}{tag}" in ids for prefix in BAD_IDS)
        assert len(ids) - len(set(ids)) == 1  # one exact duplicate
        assert next(r for r in rows if r["event_id"] == f"pii-{tag}")["text"].count("@") == 1
    ads = [json.loads(line) for line in _lines(root / "ads", "date=*/ads-0.jsonl")]
    ad_ids = [a["ad_id"] for a in ads]
    assert len(ads) == SPEC.n_ads + 3 and len(ad_ids) - len(set(ad_ids)) == 1
    assert {"ad-negative-price", "ad-no-title"} <= set(ad_ids)


def test_no_bad_rows_when_asked(tmp_path) -> None:
    generate(GeneratorSpec(n_users=20, n_ads=15, n_events=500, n_days=2, seed=2, bad_rows_per_day=0), tmp_path)
    lines = _lines(tmp_path / "events", "date=*/events-0.jsonl")
    rows = [json.loads(line) for line in lines]  # every line parses
    assert all(r["event_id"].startswith("ev") for r in rows)
    assert len({r["event_id"] for r in rows}) == len(rows)
    assert len(_lines(tmp_path / "ads", "date=*/ads-0.jsonl")) == 15
