"""Candidate generation for the cross-encoder: the cascade, and ``all`` for small catalogs and for checking it.

Cascade, per user: the ``top_n`` eligible ads by cosine similarity between the user's history embedding and
each ad's embedding, plus the ``prior_n`` ads with the best prior score (the cross-encoder's score of the ad
for an empty history: the ad's quality, independent of the user), never an ad the user already clicked.
Users with no history but searches are matched on their queries; users with neither get the popular ads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

PERSONALIZED, QUERY, POPULAR = "personalized", "query", "popular"


@dataclass(frozen=True)
class AdIndex:
    """Eligible ads, in one fixed order: ids, L2-normalised embeddings, prior and popularity orders."""

    ad_ids: np.ndarray  # (A,) object
    embeddings: np.ndarray  # (A, d) float32
    prior_order: np.ndarray  # indices, best prior score first
    popular_order: np.ndarray  # indices, most clicked first

    def __post_init__(self) -> None:
        n = len(self.ad_ids)
        if self.embeddings.shape[0] != n or len(self.prior_order) != n or len(self.popular_order) != n:
            raise ValueError("AdIndex arrays must all describe the same ads")

    @property
    def position(self) -> dict[str, int]:
        return {a: i for i, a in enumerate(self.ad_ids)}


def build_index(ad_ids: Sequence[str], embeddings: np.ndarray, prior: np.ndarray, clicks: np.ndarray) -> AdIndex:
    ids = np.asarray(ad_ids, dtype=object)
    order = np.argsort(ids, kind="stable")  # a fixed order whatever order Spark returned rows in
    ids, emb, prior, clicks = ids[order], np.asarray(embeddings, np.float32)[order], np.asarray(prior)[order], \
        np.asarray(clicks)[order]
    prior_order = np.lexsort((ids, -prior))  # ties by ad id
    popular_order = np.lexsort((ids, -clicks))
    return AdIndex(ids, emb, prior_order, popular_order)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest finite scores, best first (ties by index)."""
    finite = np.flatnonzero(np.isfinite(scores))
    if len(finite) == 0 or k <= 0:
        return np.empty(0, dtype=np.int64)
    k = min(k, len(finite))
    part = finite[np.argpartition(-scores[finite], k - 1)[:k]] if k < len(finite) else finite
    return part[np.lexsort((part, -scores[part]))]


def retrieve(index: AdIndex, user_vec: np.ndarray | None, clicked: Sequence[str], strategy: str, *, top_n: int,
             prior_n: int, popular_n: int) -> list[tuple[str, str]]:
    """(ad_id, source) candidates for one user; ``source`` is similarity, prior or popular."""
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
    add(index.prior_order, "prior", prior_n)
    return out


def retrieve_partition(frames: Iterator[pd.DataFrame], index: AdIndex, *, top_n: int, prior_n: int,
                       popular_n: int) -> Iterator[pd.DataFrame]:
    """mapInPandas body: rows (user_id, embedding, clicked_ad_ids, strategy) -> (user_id, ad_id, source)."""
    for df in frames:
        users, ads, sources = [], [], []
        for user, vec, clicked, strategy in zip(df["user_id"], df["embedding"], df["clicked_ad_ids"],
                                                df["strategy"], strict=True):
            vec = None if vec is None or len(vec) == 0 else np.asarray(vec, dtype=np.float32)
            for ad, source in retrieve(index, vec, list(clicked) if clicked is not None else [], strategy,
                                       top_n=top_n, prior_n=prior_n, popular_n=popular_n):
                users.append(user)
                ads.append(ad)
                sources.append(source)
        yield pd.DataFrame({"user_id": users, "ad_id": ads, "source": sources})
