"""Diversity re-rank and reasons for one user's scored candidates (pure numpy, unit-tested without Spark).

Greedy in score order: an ad is skipped when its advertiser already has ``max_per_advertiser`` slots, its
title (case and spacing aside) is one already chosen, or its text embedding is a near-duplicate (cosine >=
``duplicate_similarity``) of an ad already chosen. The limits are never broken to fill the list: when too few
ads pass them, the user gets fewer than ``k``.

Reasons say only what is true of how the ad was found (the candidate ``source``): "Because you clicked X" only
when X's embedding is within ``reason_min_similarity`` of the ad; ads from the prior or the popular list say so.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from adrec_spark import schema as S
from adrec_spark.scoring.candidates import POPULAR, QUERY

# Candidate sources (candidates.retrieve and the ``all`` mode)
SIMILARITY_SOURCE, PRIOR_SOURCE, POPULAR_SOURCE = "similarity", "prior", "popular"


@dataclass(frozen=True)
class AdInfo:
    """What the re-rank needs per ad: embedding row, advertiser, title and category (for reasons)."""

    position: Mapping[str, int]
    embeddings: np.ndarray
    advertiser: Sequence[str]
    title: Sequence[str]
    category: Sequence[str] = ()


def _title_key(title: str) -> str:
    return " ".join(str(title).split()).casefold()


def diversify(ad_ids: Sequence[str], scores: Sequence[float], info: AdInfo, *, k: int, max_per_advertiser: int,
              duplicate_similarity: float) -> list[int]:
    """Indices into ``ad_ids`` of the chosen ads, in final rank order (at most ``k``; fewer when the limits
    leave fewer)."""
    order = sorted(range(len(ad_ids)), key=lambda i: (-scores[i], ad_ids[i]))
    chosen: list[int] = []
    per_adv: dict[str, int] = {}
    titles: set[str] = set()
    vecs: list[np.ndarray] = []
    for i in order:
        if len(chosen) >= k:
            break
        p = info.position[ad_ids[i]]
        adv = info.advertiser[p]
        title = _title_key(info.title[p])
        v = info.embeddings[p]
        if per_adv.get(adv, 0) >= max_per_advertiser or title in titles:
            continue
        if vecs and float(np.max(np.stack(vecs) @ v)) >= duplicate_similarity:
            continue
        chosen.append(i)
        per_adv[adv] = per_adv.get(adv, 0) + 1
        titles.add(title)
        vecs.append(v)
    return chosen


def reason_for(ad_id: str, strategy: str, recent_clicked: Sequence[str], recent_queries: Sequence[str],
               info: AdInfo, *, source: str = SIMILARITY_SOURCE, min_similarity: float = 0.5) -> str:
    """A short reason that says how the ad was found: from the prior or the popular list, close to an ad the
    user clicked (cosine >= ``min_similarity``), matched on the user's searches, or on their activity."""
    p = info.position[ad_id]
    if source == POPULAR_SOURCE:
        return "Popular with other users right now"
    clicked = [a for a in recent_clicked if a in info.position]
    if source == PRIOR_SOURCE:
        category = info.category[p] if len(info.category) else None
        if category and any(info.category[info.position[a]] == category for a in clicked):
            return f"Often a good match for people who click {category} ads"
        return "A good match for most users"
    if clicked:
        sims = info.embeddings[[info.position[a] for a in clicked]] @ info.embeddings[p]
        best = int(np.argmax(sims))
        if float(sims[best]) >= min_similarity:
            return f"Because you clicked \u201c{info.title[info.position[clicked[best]]]}\u201d"
    if strategy == QUERY:
        q = next((q for q in recent_queries if q), None)
        if q:
            return f"Matches your search \u201c{q}\u201d"
    if strategy == POPULAR:  # the ``all`` mode scores every ad for a user about whom nothing is known
        return "A good match for most users"
    return "Matches your recent activity"


def rerank_group(df: pd.DataFrame, info: AdInfo, *, k: int, max_per_advertiser: int,
                 duplicate_similarity: float, reason_min_similarity: float = 0.5) -> pd.DataFrame:
    """applyInPandas body for one user's rows: user_id, ad_id, score, strategy, recent_clicked_ad_ids,
    recent_queries[, candidate_source] -> top ``k`` (or fewer) with rank and reason."""
    ads = df["ad_id"].tolist()
    scores = df["score"].astype(float).tolist()
    sources = (df["candidate_source"].tolist() if "candidate_source" in df
               else [SIMILARITY_SOURCE] * len(ads))
    keep = [i for i, a in enumerate(ads) if a in info.position]
    ads, scores, sources = [ads[i] for i in keep], [scores[i] for i in keep], [sources[i] for i in keep]
    picks = diversify(ads, scores, info, k=k, max_per_advertiser=max_per_advertiser,
                      duplicate_similarity=duplicate_similarity)
    first = df.iloc[0]
    clicked = list(first["recent_clicked_ad_ids"]) if first["recent_clicked_ad_ids"] is not None else []
    queries = list(first["recent_queries"]) if first["recent_queries"] is not None else []
    return pd.DataFrame({
        "user_id": [first["user_id"]] * len(picks),
        S.RANK: list(range(1, len(picks) + 1)),
        "ad_id": [ads[i] for i in picks],
        "score": [float(scores[i]) for i in picks],
        S.REASON: [reason_for(ads[i], first[S.STRATEGY], clicked, queries, info, source=str(sources[i]),
                              min_similarity=reason_min_similarity) for i in picks],
        S.STRATEGY: [first[S.STRATEGY]] * len(picks),
    })


def rerank_partition(frames: Iterator[pd.DataFrame], info: AdInfo, **kw: object) -> Iterator[pd.DataFrame]:
    for df in frames:
        yield rerank_group(df, info, **kw)  # type: ignore[arg-type]
