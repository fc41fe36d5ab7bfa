"""Candidate generation for the cross-encoder: the cascade, and ``all`` for small catalogs and for checking it.

Cascade, per user: the ``top_n`` eligible ads by cosine similarity between the user's history embedding and
each ad's embedding, plus the ``prior_n`` ads with the best prior score, never an ad the user already
clicked. The prior is the cross-encoder's score of the ad for an empty history, computed once per ad at a few
levels of the user-ad category affinity (the ``category_match`` feature: the share of the user's clicks in
the ad's category) and interpolated at each user's own affinity, so the numeric user-ad signal the
cross-encoder reads also steers retrieval. Users with no history but searches are matched on their queries;
users with neither get the popular ads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

PERSONALIZED, QUERY, POPULAR = "personalized", "query", "popular"


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

    def __post_init__(self) -> None:
        n = len(self.ad_ids)
        if self.embeddings.shape[0] != n or len(self.prior_order) != n or len(self.popular_order) != n:
            raise ValueError("AdIndex arrays must all describe the same ads")
        if self.prior_levels is not None and self.prior_levels.shape[0] != n:
            raise ValueError("AdIndex arrays must all describe the same ads")
        if self.category_codes is not None and len(self.category_codes) != n:
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
                categories: Sequence[str] | None = None) -> AdIndex:
    """``prior``: (A,) scores, or (A, L) scores at :func:`affinity_levels` (L) of the category affinity."""
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
    return AdIndex(ids, emb, prior_order, popular_order, levels, names, codes)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest finite scores, best first (ties by index)."""
    finite = np.flatnonzero(np.isfinite(scores))
    if len(finite) == 0 or k <= 0:
        return np.empty(0, dtype=np.int64)
    k = min(k, len(finite))
    part = finite[np.argpartition(-scores[finite], k - 1)[:k]] if k < len(finite) else finite
    return part[np.lexsort((part, -scores[part]))]


def retrieve(index: AdIndex, user_vec: np.ndarray | None, clicked: Sequence[str], strategy: str, *, top_n: int,
             prior_n: int, popular_n: int, category_share: Mapping[str, float] | None = None) -> list[tuple[str, str]]:
    """(ad_id, source) candidates for one user; ``source`` is similarity, prior or popular. With
    ``category_share`` (the user's share of clicks per category) the prior is the user's personalized one."""
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

    if strategy == POPULAR or user_vec is None:
        add(index.popular_order, "popular", popular_n)
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


def category_shares(category_clicks: object, user_clicks: object) -> dict[str, float]:
    """The user's share of clicks per category (the ``category_match`` feature's definition); the map comes
    from Arrow as a dict or a list of (key, value) pairs."""
    if category_clicks is None or not user_clicks:
        return {}
    items = category_clicks.items() if isinstance(category_clicks, dict) else category_clicks
    total = float(user_clicks)
    return {str(k): float(v or 0) / total for k, v in items} if total > 0 else {}


def retrieve_partition(frames: Iterator[pd.DataFrame], index: AdIndex, *, top_n: int, prior_n: int,
                       popular_n: int) -> Iterator[pd.DataFrame]:
    """mapInPandas body: rows (user_id, embedding, clicked_ad_ids, strategy[, category_clicks, user_clicks])
    -> (user_id, ad_id, source)."""
    for df in frames:
        users, ads, sources = [], [], []
        cat = df["category_clicks"] if "category_clicks" in df else [None] * len(df)
        ucl = df["user_clicks"] if "user_clicks" in df else [0] * len(df)
        for user, vec, clicked, strategy, cc, uc in zip(df["user_id"], df["embedding"], df["clicked_ad_ids"],
                                                        df["strategy"], cat, ucl, strict=True):
            vec = None if vec is None or len(vec) == 0 else np.asarray(vec, dtype=np.float32)
            for ad, source in retrieve(index, vec, list(clicked) if clicked is not None else [], strategy,
                                       top_n=top_n, prior_n=prior_n, popular_n=popular_n,
                                       category_share=category_shares(cc, uc)):
                users.append(user)
                ads.append(ad)
                sources.append(source)
        yield pd.DataFrame({"user_id": users, "ad_id": ads, "source": sources})
