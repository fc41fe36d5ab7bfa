"""Diversity re-rank and reasons for one user's scored candidates (pure numpy, unit-tested without Spark).

Greedy in score order: an ad is skipped when its advertiser already has ``max_per_advertiser`` slots or its
text embedding is a near-duplicate (cosine >= ``duplicate_similarity``) of an ad already chosen. If that
leaves fewer than ``k`` ads, the skipped ones fill the list in score order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from adrec_spark.scoring.candidates import POPULAR, QUERY


@dataclass(frozen=True)
class AdInfo:
    """What the re-rank needs per ad: embedding row, advertiser and title (for reasons)."""

    position: Mapping[str, int]
    embeddings: np.ndarray
    advertiser: Sequence[str]
    title: Sequence[str]


def diversify(ad_ids: Sequence[str], scores: Sequence[float], info: AdInfo, *, k: int, max_per_advertiser: int,
              duplicate_similarity: float) -> list[int]:
    """Indices into ``ad_ids`` of the chosen ads, in final rank order."""
    order = sorted(range(len(ad_ids)), key=lambda i: (-scores[i], ad_ids[i]))
    chosen: list[int] = []
    skipped: list[int] = []
    per_adv: dict[str, int] = {}
    vecs: list[np.ndarray] = []
    for i in order:
        if len(chosen) >= k:
            break
        p = info.position[ad_ids[i]]
        adv = info.advertiser[p]
        v = info.embeddings[p]
        too_many = per_adv.get(adv, 0) >= max_per_advertiser
        duplicate = bool(vecs) and float(np.max(np.stack(vecs) @ v)) >= duplicate_similarity
        if too_many or duplicate:
            skipped.append(i)
            continue
        chosen.append(i)
        per_adv[adv] = per_adv.get(adv, 0) + 1
        vecs.append(v)
    for i in skipped:  # not enough diverse ads: fill in score order
        if len(chosen) >= k:
            break
        chosen.append(i)
    return chosen


def reason_for(ad_id: str, strategy: str, recent_clicked: Sequence[str], recent_queries: Sequence[str],
               info: AdInfo) -> str:
    """A short reason: the history item closest to the ad, the last search, or popularity."""
    if strategy == POPULAR:
        return "Popular with other users right now"
    clicked = [a for a in recent_clicked if a in info.position]
    if clicked:
        v = info.embeddings[info.position[ad_id]]
        sims = info.embeddings[[info.position[a] for a in clicked]] @ v
        best = clicked[int(np.argmax(sims))]
        return f"Because you clicked \u201c{info.title[info.position[best]]}\u201d"
    if strategy == QUERY or recent_queries:
        q = next((q for q in recent_queries if q), None)
        if q:
            return f"Matches your search \u201c{q}\u201d"
    return "Matches your recent activity"


def rerank_group(df: pd.DataFrame, info: AdInfo, *, k: int, max_per_advertiser: int,
                 duplicate_similarity: float) -> pd.DataFrame:
    """applyInPandas body for one user's rows: user_id, ad_id, score, strategy, recent_clicked_ad_ids,
    recent_queries -> top ``k`` with rank and reason."""
    ads = df["ad_id"].tolist()
    scores = df["score"].astype(float).tolist()
    keep = [i for i, a in enumerate(ads) if a in info.position]
    ads, scores = [ads[i] for i in keep], [scores[i] for i in keep]
    picks = diversify(ads, scores, info, k=k, max_per_advertiser=max_per_advertiser,
                      duplicate_similarity=duplicate_similarity)
    first = df.iloc[0]
    clicked = list(first["recent_clicked_ad_ids"]) if first["recent_clicked_ad_ids"] is not None else []
    queries = list(first["recent_queries"]) if first["recent_queries"] is not None else []
    return pd.DataFrame({
        "user_id": [first["user_id"]] * len(picks),
        "rank": list(range(1, len(picks) + 1)),
        "ad_id": [ads[i] for i in picks],
        "score": [float(scores[i]) for i in picks],
        "reason": [reason_for(ads[i], first["strategy"], clicked, queries, info) for i in picks],
        "strategy": [first["strategy"]] * len(picks),
    })


def rerank_partition(frames: Iterator[pd.DataFrame], info: AdInfo, **kw: object) -> Iterator[pd.DataFrame]:
    for df in frames:
        yield rerank_group(df, info, **kw)  # type: ignore[arg-type]
