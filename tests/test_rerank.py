"""Candidate retrieval and the diversity re-rank: pure numpy, expected results worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from adrec_spark.scoring import candidates as C
from adrec_spark.scoring.rerank import AdInfo, diversify, reason_for, rerank_group


def _unit(*v: float) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


@pytest.fixture
def index() -> C.AdIndex:
    emb = np.stack([_unit(1, 0, 0), _unit(0.9, 0.1, 0), _unit(0, 1, 0), _unit(0, 0, 1), _unit(0.5, 0.5, 0)])
    # given out of order: build_index sorts by id
    ids = ["a3", "a1", "a4", "a0", "a2"]
    perm = [3, 1, 4, 0, 2]  # rows of `emb` for those ids: a3->emb[3], a1->emb[1], ...
    prior = np.array([0.1, 0.9, 0.5, 0.2, 0.7])  # a3 .1, a1 .9, a4 .5, a0 .2, a2 .7
    clicks = np.array([5, 1, 9, 0, 2])
    return C.build_index(ids, emb[perm], prior, clicks)


def test_index_orders(index) -> None:
    assert list(index.ad_ids) == ["a0", "a1", "a2", "a3", "a4"]
    assert [index.ad_ids[i] for i in index.prior_order] == ["a1", "a2", "a4", "a0", "a3"]
    assert [index.ad_ids[i] for i in index.popular_order] == ["a4", "a3", "a2", "a1", "a0"]


def test_retrieve_similarity_then_prior_without_clicked(index) -> None:
    got = C.retrieve(index, _unit(1, 0, 0), ["a0"], C.PERSONALIZED, top_n=2, prior_n=2, popular_n=3)
    # embeddings: a0 (1,0,0), a1 (.9,.1,0), a2 (0,1,0), a3 (0,0,1), a4 (.5,.5,0)
    # similarity to (1,0,0): a0 1.0 (clicked: excluded), a1 .99, a4 .71, a2 0, a3 0 -> a1, a4
    # prior, best first, skipping those already in and the clicked: a1 (in), a2, a4 (in), a0 (clicked), a3
    assert got == [("a1", "similarity"), ("a4", "similarity"), ("a2", "prior"), ("a3", "prior")]


def test_retrieve_popular_for_users_without_history(index) -> None:
    got = C.retrieve(index, None, ["a4"], C.POPULAR, top_n=2, prior_n=2, popular_n=2)
    assert got == [("a3", "popular"), ("a2", "popular")]


def test_retrieve_never_returns_more_than_the_catalog(index) -> None:
    got = C.retrieve(index, _unit(0, 1, 0), [], C.QUERY, top_n=10, prior_n=10, popular_n=10)
    assert sorted(a for a, _ in got) == ["a0", "a1", "a2", "a3", "a4"]


def _info(emb, advertisers, titles=None) -> AdInfo:
    ids = [f"a{i}" for i in range(len(emb))]
    return AdInfo({a: i for i, a in enumerate(ids)}, np.stack(emb), advertisers, titles or ids)


def test_diversify_limits_advertisers_and_near_duplicates() -> None:
    info = _info([_unit(1, 0), _unit(1, 0.01), _unit(0, 1), _unit(0.6, 0.8), _unit(-1, 0)],
                 ["x", "y", "x", "x", "z"])
    ads = ["a0", "a1", "a2", "a3", "a4"]
    scores = [0.9, 0.8, 0.7, 0.6, 0.1]
    picks = diversify(ads, scores, info, k=3, max_per_advertiser=2, duplicate_similarity=0.95)
    # a0; a1 is a near-duplicate of a0; a2 (x, 2nd); a3 would be x's 3rd; a4
    assert [ads[i] for i in picks] == ["a0", "a2", "a4"]
    # not enough diverse ads: fewer than k, never a near-duplicate or an advertiser's third ad
    picks = diversify(ads, scores, info, k=5, max_per_advertiser=2, duplicate_similarity=0.95)
    assert [ads[i] for i in picks] == ["a0", "a2", "a4"]


def test_diversify_never_repeats_a_title() -> None:
    # a0 and a2: the same title (case and spacing aside), different advertisers, unrelated embeddings
    info = _info([_unit(1, 0, 0), _unit(0, 1, 0), _unit(0, 0, 1)], ["x", "y", "z"],
                 ["Luxury nail kit - limited offer", "Wool coat", "luxury  nail kit - LIMITED offer"])
    picks = diversify(["a0", "a1", "a2"], [0.9, 0.5, 0.8], info, k=3, max_per_advertiser=2,
                      duplicate_similarity=0.95)
    assert picks == [0, 1]


def test_diversify_keeps_max_per_advertiser_when_fewer_than_k_remain() -> None:
    info = _info([_unit(1, 0, 0), _unit(0, 1, 0), _unit(0, 0, 1), _unit(1, 1, 1)], ["x", "x", "x", "y"])
    picks = diversify(["a0", "a1", "a2", "a3"], [0.9, 0.8, 0.7, 0.1], info, k=4, max_per_advertiser=2,
                      duplicate_similarity=0.99)
    assert picks == [0, 1, 3]  # x's third ad (a2) stays out although the list is short


def test_diversify_ties_break_by_ad_id() -> None:
    info = _info([_unit(1, 0), _unit(0, 1), _unit(-1, 0)], ["x", "y", "z"])
    picks = diversify(["a2", "a0", "a1"], [0.5, 0.5, 0.5], info, k=3, max_per_advertiser=1, duplicate_similarity=1)
    assert picks == [1, 2, 0]


def test_reasons() -> None:
    info = _info([_unit(1, 0), _unit(0.9, 0.1), _unit(0, 1)], ["x", "y", "z"], ["Alpha", "Beta", "Gamma"])
    assert reason_for("a0", C.PERSONALIZED, ["a2", "a1"], [], info) == "Because you clicked \u201cBeta\u201d"
    assert reason_for("a0", C.QUERY, [], ["cheap flights"], info) == "Matches your search \u201ccheap flights\u201d"
    assert reason_for("a0", C.POPULAR, ["a1"], [], info, source="popular").startswith("Popular")


def test_reason_names_a_clicked_ad_only_above_the_threshold() -> None:
    # a safari (a0) and an overcoat (a1) are unrelated: cosine 0.2 by construction
    info = _info([_unit(1, 0), _unit(0.2, np.sqrt(1 - 0.04)), _unit(0.6, 0.8)], ["x", "y", "z"],
                 ["Kenya safari", "Classic wool overcoat", "Wool scarf"])
    assert reason_for("a0", C.PERSONALIZED, ["a1"], [], info, min_similarity=0.5) == "Matches your recent activity"
    # cosine(a0, a2) = 0.6 >= 0.5: a2 is named, not the closer-in-time a1
    assert reason_for("a0", C.PERSONALIZED, ["a1", "a2"], [], info, min_similarity=0.5) == \
        "Because you clicked \u201cWool scarf\u201d"
    assert reason_for("a0", C.PERSONALIZED, ["a1", "a2"], [], info, min_similarity=0.7) == \
        "Matches your recent activity"


def test_prior_and_popular_candidates_say_how_they_were_found() -> None:
    info = AdInfo({"a0": 0, "a1": 1, "a2": 2}, np.stack([_unit(1, 0), _unit(1, 0.01), _unit(0, 1)]),
                  ["x", "y", "z"], ["Alpha", "Beta", "Gamma"], ["travel", "travel", "fashion"])
    # a1 is a near copy of the clicked a0, yet it came from the prior: the reason says so
    assert reason_for("a1", C.PERSONALIZED, ["a0"], [], info, source="prior") == \
        "Often a good match for people who click travel ads"
    assert reason_for("a2", C.PERSONALIZED, ["a0"], [], info, source="prior") == "A good match for most users"
    assert reason_for("a1", C.PERSONALIZED, ["a0"], [], info, source="popular") == \
        "Popular with other users right now"
    assert reason_for("a1", C.PERSONALIZED, ["a0"], [], info, source="similarity") == \
        "Because you clicked \u201cAlpha\u201d"


def test_rerank_group_output() -> None:
    info = _info([_unit(1, 0), _unit(0, 1), _unit(-1, 0)], ["x", "x", "y"], ["Alpha", "Beta", "Gamma"])
    df = pd.DataFrame({"user_id": ["u1"] * 4, "ad_id": ["a0", "a1", "a2", "gone"], "score": [0.2, 0.9, 0.5, 1.0],
                       "strategy": [C.PERSONALIZED] * 4, "recent_clicked_ad_ids": [["a1"]] * 4,
                       "recent_queries": [[]] * 4, "candidate_source": ["similarity"] * 3 + ["prior"]})
    out = rerank_group(df, info, k=2, max_per_advertiser=1, duplicate_similarity=0.99, reason_min_similarity=0.5)
    assert out["ad_id"].tolist() == ["a1", "a2"]  # "gone" is no longer in the catalog; a0 is x's second ad
    assert out["rank"].tolist() == [1, 2]
    # a2 (-1, 0) is orthogonal to the clicked a1 (0, 1): no "because you clicked" for it
    assert out["reason"].tolist() == ["Because you clicked \u201cBeta\u201d", "Matches your recent activity"]
    # k=3 with one slot per advertiser: two ads, not a third that breaks the limit
    out = rerank_group(df.assign(candidate_source="prior"), info, k=3, max_per_advertiser=1,
                       duplicate_similarity=0.99, reason_min_similarity=0.5)
    assert out["ad_id"].tolist() == ["a1", "a2"]
    assert out["reason"].tolist() == ["A good match for most users"] * 2


def test_personalized_prior_follows_the_users_category_affinity() -> None:
    emb = np.stack([_unit(1, 0, 0)] * 3)
    # prior at affinity 0, 0.5, 1: b0 is good for anyone, b1 only for users who like 'x'
    prior = np.array([[0.6, 0.6, 0.6], [0.1, 0.5, 0.9], [0.3, 0.3, 0.3]])
    index = C.build_index(["b0", "b1", "b2"], emb, prior, np.zeros(3), categories=["y", "x", "z"])
    assert C.affinity_levels(3).tolist() == [0.0, 0.5, 1.0]
    # by hand: share 0.25 of 'x' -> b1 halfway between 0.1 and 0.5 = 0.3
    np.testing.assert_allclose(index.personalized_prior({"x": 0.25}), [0.6, 0.3, 0.3])
    np.testing.assert_allclose(index.personalized_prior({"x": 1.0, "y": 0.0}), [0.6, 0.9, 0.3])
    fan = C.retrieve(index, _unit(0, 1, 0), [], C.PERSONALIZED, top_n=0, prior_n=2, popular_n=0,
                     category_share={"x": 1.0})
    assert fan == [("b1", "prior"), ("b0", "prior")]
    # no affinity: the neutral prior order (b0, then b2 before b1)
    plain = C.retrieve(index, _unit(0, 1, 0), [], C.PERSONALIZED, top_n=0, prior_n=2, popular_n=0,
                       category_share={})
    assert plain == [("b0", "prior"), ("b2", "prior")]


def test_category_shares_from_arrow_maps() -> None:
    assert C.category_shares([("x", 3), ("y", 1)], 4) == {"x": 0.75, "y": 0.25}
    assert C.category_shares({"x": 2}, 4) == {"x": 0.5}
    assert C.category_shares(None, 4) == {} and C.category_shares([("x", 1)], 0) == {}
    with pytest.raises(ValueError):
        C.affinity_levels(0)
