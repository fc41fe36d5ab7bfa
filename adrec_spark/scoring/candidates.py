"""Candidate generation for the cross-encoder: the cascade, and ``all`` for small catalogs and for checking it.

Cascade, per user: the ``top_n`` eligible ads by cosine similarity between the user's history embedding and
each ad's embedding, plus the ``prior_n`` ads with the best prior score, never an ad the user already
clicked. The prior is the cross-encoder's score of the ad for an empty history, computed once per ad at a few
levels of the user-ad category affinity (the ``category_match`` feature: the share of the user's clicks in
the ad's category) and interpolated at each user's own affinity, so the numeric user-ad signal the
cross-encoder reads also steers retrieval. Users with no history but searches are matched on their queries.
Users with neither (``score.cold_start``): those who were shown ads get the best ads of the categories they
were shown, and the rest of their candidates (all of them for users about whom nothing is known) are drawn
from the ads with the highest upper confidence bound on their click rate, seeded per (user, date); or, with
the ``popular`` strategy, the most clicked ads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from adrec_spark import schema as S

PERSONALIZED, QUERY, POPULAR = "personalized", "query", "popular"
SHOWN = "shown"  # no history, but shown ads: the categories of those impressions steer the candidates
COLD_STRATEGIES = (SHOWN, POPULAR)


@dataclass(frozen=True)
class ColdStart:
    """What :func:`retrieve` needs of ``score.cold_start`` for users without history (see the config)."""

    strategy: str = "explore"
    pool_size: int = 200
    shown_fraction: float = 0.5
    date: str = ""  # with the user id, seeds the draw: a rerun for the same date draws the same


def click_rate_ucb(clicks: np.ndarray, impressions: np.ndarray, *, z: float, prior: float,
                   strength: float) -> np.ndarray:
    """An upper confidence bound on each ad's click rate: the smoothed rate (``ad_rate``'s smoothing, clipped
    to [0, 1]) + z * its standard error with ``impressions + strength`` trials. Rarely shown ads get a wide
    bound, so they get drawn and shown."""
    n = np.asarray(impressions, dtype=np.float64) + strength
    rate = np.clip((np.asarray(clicks, dtype=np.float64) + prior * strength) / np.maximum(n, 1e-12), 0.0, 1.0)
    return rate + z * np.sqrt(rate * (1.0 - rate) / np.maximum(n, 1e-12))


def user_date_seed(user_id: object, date: str) -> int:
    """A seed from (user, date) that is the same in every process (``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(f"{user_id}|{date}".encode()).digest()[:8], "little")


def affinity_levels(n: int) -> np.ndarray:
    """The category-affinity grid the prior is scored at: ``n`` evenly spaced values in [0, 1] (just 0 for 1)."""
    if n < 1:
        raise ValueError("need at least one affinity level")
    return np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)


@dataclass(frozen=True)
class AdIndex:
    """Eligible ads, in one fixed order: ids, L2-normalised embeddings, prior scores at each affinity level,
    categories, and the prior (at affinity 0) and popularity orders."""

    ad_ids: np.ndarray  # (A,) object
    embeddings: np.ndarray  # (A, d) float32
    prior_order: np.ndarray  # indices, best prior score first
    popular_order: np.ndarray  # indices, most clicked first
    prior_levels: np.ndarray | None = None  # (A, L) prior at affinity_levels(L)
    category_names: tuple[str, ...] = ()  # the distinct categories
    category_codes: np.ndarray | None = None  # (A,) index into category_names
    ucb: np.ndarray | None = None  # (A,) click-rate upper confidence bound (click_rate_ucb)
    ucb_order: np.ndarray | None = None  # indices, highest bound first (ties by ad id)

    def __post_init__(self) -> None:
        n = len(self.ad_ids)
        if self.embeddings.shape[0] != n or len(self.prior_order) != n or len(self.popular_order) != n:
            raise ValueError("AdIndex arrays must all describe the same ads")
        if self.prior_levels is not None and self.prior_levels.shape[0] != n:
            raise ValueError("AdIndex arrays must all describe the same ads")
        if self.category_codes is not None and len(self.category_codes) != n:
            raise ValueError("AdIndex arrays must all describe the same ads")
        if (self.ucb is None) != (self.ucb_order is None) or (self.ucb is not None and len(self.ucb) != n):
            raise ValueError("AdIndex arrays must all describe the same ads")

    def personalized_prior(self, category_share: Mapping[str, float]) -> np.ndarray | None:
        """Each ad's prior at this user's affinity to its category (linear between the scored levels); None
        when the index has a single level or no categories."""
        if self.prior_levels is None or self.category_codes is None or self.prior_levels.shape[1] < 2:
            return None
        levels = self.prior_levels.shape[1]
        # one lookup per category, not per ad: this runs once per user
        share = np.array([float(category_share.get(c, 0.0)) for c in self.category_names])[self.category_codes]
        x = np.clip(np.nan_to_num(share), 0.0, 1.0) * (levels - 1)
        lo = np.minimum(np.floor(x).astype(np.int64), levels - 2)
        t = x - lo
        rows = np.arange(len(x))
        return self.prior_levels[rows, lo] * (1 - t) + self.prior_levels[rows, lo + 1] * t

    @property
    def position(self) -> dict[str, int]:
        return {a: i for i, a in enumerate(self.ad_ids)}


def build_index(ad_ids: Sequence[str], embeddings: np.ndarray, prior: np.ndarray, clicks: np.ndarray,
                categories: Sequence[str] | None = None, ucb: np.ndarray | None = None) -> AdIndex:
    """``prior``: (A,) scores, or (A, L) scores at :func:`affinity_levels` (L) of the category affinity;
    ``ucb``: (A,) click-rate bounds for the cold-start draw (:func:`click_rate_ucb`), in the order of ``ad_ids``."""
    ids = np.asarray(ad_ids, dtype=object)
    order = np.argsort(ids, kind="stable")  # a fixed order whatever order Spark returned rows in
    prior = np.asarray(prior, dtype=np.float64)
    levels = (prior if prior.ndim == 2 else prior[:, None])[order]
    ids, emb, clicks = ids[order], np.asarray(embeddings, np.float32)[order], np.asarray(clicks)[order]
    names: tuple[str, ...] = ()
    codes = None
    if categories is not None:
        uniq, codes = np.unique(np.asarray(categories, dtype=object).astype(str)[order], return_inverse=True)
        names = tuple(str(c) for c in uniq)
    prior_order = np.lexsort((ids, -levels[:, 0]))  # ties by ad id
    popular_order = np.lexsort((ids, -clicks))
    bound = bound_order = None
    if ucb is not None:
        bound = np.asarray(ucb, dtype=np.float64)[order]
        bound_order = np.lexsort((ids, -bound))
    return AdIndex(ids, emb, prior_order, popular_order, levels, names, codes, bound, bound_order)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest finite scores, best first (ties by index)."""
    finite = np.flatnonzero(np.isfinite(scores))
    if len(finite) == 0 or k <= 0:
        return np.empty(0, dtype=np.int64)
    k = min(k, len(finite))
    part = finite[np.argpartition(-scores[finite], k - 1)[:k]] if k < len(finite) else finite
    return part[np.lexsort((part, -scores[part]))]


def retrieve(index: AdIndex, user_vec: np.ndarray | None, clicked: Sequence[str], strategy: str, *, top_n: int,
             prior_n: int, popular_n: int, category_share: Mapping[str, float] | None = None,
             cold: ColdStart | None = None, user_id: object = "",
             shown_share: Mapping[str, float] | None = None) -> list[tuple[str, str]]:
    """(ad_id, source) candidates for one user; ``source`` is similarity, prior, popular, shown or explore.
    With ``category_share`` (the user's share of clicks per category) the prior is the user's personalized
    one. A user without history gets :func:`cold_start_candidates` when ``cold`` explores (``shown_share``:
    the user's share of impressions per category; ``user_id`` seeds the draw), else the most clicked ads."""
    pos = index.position
    blocked = np.zeros(len(index.ad_ids), dtype=bool)
    for a in clicked:
        if a in pos:
            blocked[pos[a]] = True
    out: list[tuple[str, str]] = []
    seen: set[int] = set()

    def add(indices: Sequence[int], source: str, limit: int) -> None:
        taken = 0
        for i in indices:
            if taken >= limit:
                break
            if blocked[i] or i in seen:
                continue
            seen.add(int(i))
            out.append((str(index.ad_ids[i]), source))
            taken += 1

    if strategy in COLD_STRATEGIES or user_vec is None:
        if cold is None or cold.strategy == "popular" or index.ucb_order is None:
            add(index.popular_order, "popular", popular_n)
            return out
        for source, picks in cold_start_candidates(index, blocked, popular_n, cold=cold, user_id=user_id,
                                                   shown_share=shown_share or {}):
            add(picks, source, len(picks))
        return out
    sims = index.embeddings @ np.asarray(user_vec, dtype=np.float32)
    sims[blocked] = -np.inf
    add(_top(sims, top_n), "similarity", top_n)
    personal = index.personalized_prior(category_share) if category_share else None
    if personal is None:
        add(index.prior_order, "prior", prior_n)
    else:
        add(np.argsort(-personal, kind="stable"), "prior", prior_n)  # ties by position = by ad id
    return out


def cold_start_candidates(index: AdIndex, blocked: np.ndarray, n: int, *, cold: ColdStart, user_id: object,
                          shown_share: Mapping[str, float]) -> list[tuple[str, list[int]]]:
    """Up to ``n`` ad indices for a user without history, as (source, indices) groups.

    ``shown``: round(n * shown_fraction) ads of the categories the user was shown, each category's quota in
    proportion to its share of the impressions, the highest click-rate bounds first (deterministic).
    ``explore``: the rest, drawn without replacement from the ``pool_size`` unblocked ads with the highest
    bounds (those not already taken), with probability proportional to the bound, seeded by (user, date).
    """
    if index.ucb is None or index.ucb_order is None:
        raise ValueError("cold_start_candidates: the ad index has no click-rate bounds (build_index ucb=...)")
    order = [int(i) for i in index.ucb_order if not blocked[i]]
    taken: list[int] = []
    if shown_share and index.category_codes is not None and cold.shown_fraction > 0:
        n_shown = round(n * cold.shown_fraction)
        code = {c: k for k, c in enumerate(index.category_names)}
        total = sum(v for v in shown_share.values() if v > 0)
        for cat, share in sorted(shown_share.items(), key=lambda kv: (-kv[1], kv[0])):
            if cat not in code or share <= 0 or len(taken) >= n_shown:
                continue
            quota = min(max(1, round(n_shown * share / total)), n_shown - len(taken))
            taken += [i for i in order if index.category_codes[i] == code[cat]][:quota]
    chosen = set(taken)
    pool = np.array([i for i in order if i not in chosen][:cold.pool_size], dtype=np.int64)
    k = min(n - len(taken), len(pool))
    drawn: list[int] = []
    if k > 0:
        weights = np.maximum(index.ucb[pool], 1e-12)
        rng = np.random.default_rng(user_date_seed(user_id, cold.date))
        picked = rng.choice(len(pool), size=k, replace=False, p=weights / weights.sum())
        drawn = [int(pool[j]) for j in sorted(picked)]  # in pool order: highest bound first
    return [("shown", taken), ("explore", drawn)]


def category_shares(category_clicks: object, user_clicks: object) -> dict[str, float]:
    """The user's share of clicks per category (the ``category_match`` feature's definition); the map comes
    from Arrow as a dict or a list of (key, value) pairs."""
    if category_clicks is None or not user_clicks:
        return {}
    total = float(user_clicks)
    return {str(k): float(v or 0) / total for k, v in _items(category_clicks)} if total > 0 else {}


def _items(arrow_map: object) -> list[tuple[object, object]]:
    """A map column's entries: Arrow gives a dict or a list of (key, value) pairs."""
    if arrow_map is None:
        return []
    return list(arrow_map.items()) if isinstance(arrow_map, dict) else list(arrow_map)


def retrieve_partition(frames: Iterator[pd.DataFrame], index: AdIndex, *, top_n: int, prior_n: int,
                       popular_n: int, cold: ColdStart | None = None) -> Iterator[pd.DataFrame]:
    """mapInPandas body: rows (user_id, embedding, clicked_ad_ids, strategy[, category_clicks, user_clicks,
    shown_categories]) -> (user_id, ad_id, source). ``shown_categories``: impressions per category."""
    for df in frames:
        users, ads, sources = [], [], []
        cat = df["category_clicks"] if "category_clicks" in df else [None] * len(df)
        ucl = df["user_clicks"] if "user_clicks" in df else [0] * len(df)
        shown = df["shown_categories"] if "shown_categories" in df else [None] * len(df)
        for user, vec, clicked, strategy, cc, uc, sh in zip(df["user_id"], df["embedding"], df["clicked_ad_ids"],
                                                            df[S.STRATEGY], cat, ucl, shown, strict=True):
            vec = None if vec is None or len(vec) == 0 else np.asarray(vec, dtype=np.float32)
            shown_total = sum(v for _, v in _items(sh)) if sh is not None else 0
            for ad, source in retrieve(index, vec, list(clicked) if clicked is not None else [], strategy,
                                       top_n=top_n, prior_n=prior_n, popular_n=popular_n,
                                       category_share=category_shares(cc, uc), cold=cold, user_id=user,
                                       shown_share=category_shares(sh, shown_total)):
                users.append(user)
                ads.append(ad)
                sources.append(source)
        yield pd.DataFrame({S.USER_ID: users, S.AD_ID: ads, S.SOURCE: sources})
