"""Beyond-accuracy metrics against brute-force pairwise loops and hand-computed tiny cases."""

from __future__ import annotations

import itertools
import logging
import math
import re

import numpy as np
import pytest

from adrec_spark.errors import InputDataError, MissingColumnsError
from adrec_spark.evaluation.beyond import beyond_accuracy, gini_from_histogram

RECS_SCHEMA = "user_id string, ad_id string, rank int"
ADS_SCHEMA = "ad_id string, category string, advertiser_id string, embedding array<float>"
POP_SCHEMA = "ad_id string, n_users long"


def _recs(spark, lists: dict[str, list[str]]):
    rows = [(u, ad, r) for u, ads in lists.items() for r, ad in enumerate(ads, start=1)]
    return spark.createDataFrame(rows, RECS_SCHEMA)


def _ads(spark, ads: dict[str, tuple[str, str, list[float] | None]]):
    return spark.createDataFrame([(a, c, adv, e) for a, (c, adv, e) in ads.items()], ADS_SCHEMA)


def brute_force(lists, ads, popularity, total_users) -> dict[str, float]:
    """Every metric from its definition, with explicit loops over item pairs and user pairs."""
    ild_cat, ild_emb = [], []
    for items in lists.values():
        pairs = list(itertools.combinations(items, 2))
        if not pairs:
            continue
        ild_cat.append(np.mean([ads[a][0] != ads[b][0] for a, b in pairs]))
        vec = {a: np.asarray(ads[a][2], dtype=np.float32).astype(np.float64) for a in items}
        ild_emb.append(np.mean([1 - vec[a] @ vec[b] / np.linalg.norm(vec[a]) / np.linalg.norm(vec[b])
                                for a, b in pairs]))
    catalog = sorted(ads)
    onehot = {u: np.array([a in items for a in catalog], dtype=float) for u, items in lists.items()}
    sims = [onehot[u] @ onehot[v] / np.linalg.norm(onehot[u]) / np.linalg.norm(onehot[v])
            for u, v in itertools.combinations(lists, 2)]
    rows = [a for items in lists.values() for a in items]
    novelty = np.mean([-math.log2(popularity[a] / total_users if popularity.get(a, 0) > 0
                                  else 1 / (total_users + 1)) for a in rows])
    per_adv = {adv: 0 for _, adv, _ in ads.values()}
    for a in rows:
        per_adv[ads[a][1]] += 1
    x = np.array(list(per_adv.values()), dtype=float)
    gini = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())  # mean absolute difference
    return {
        "coverage": len(set(rows)) / len(ads),
        "ild_category": float(np.mean(ild_cat)),
        "ild_embedding": float(np.mean(ild_emb)),
        "personalization": 1 - float(np.mean(sims)),
        "novelty": float(novelty),
        "gini_advertiser": float(gini),
        "top_advertiser_share": x.max() / len(rows),
        "n_users": float(len(lists)),
        "n_recommendations": float(len(rows)),
    }


def test_beyond_accuracy_matches_brute_force(spark) -> None:
    rng = np.random.default_rng(2)
    ads = {f"a{i:02d}": (f"c{rng.integers(0, 4)}", f"adv{i % 4}", rng.normal(size=5).tolist()) for i in range(24)}
    ads["z1"] = ("c0", "adv_never", [1.0, 0.0, 0.0, 0.0, 0.0])  # an advertiser nobody is shown
    recommendable = [a for a in ads if a != "z1"]
    lists = {f"u{u}": rng.choice(recommendable, size=int(rng.integers(1, 7)), replace=False).tolist()
             for u in range(15)}
    popularity = {a: int(rng.integers(0, 40)) for a in recommendable[:18]}  # some ads unseen, some with 0
    pop_df = spark.createDataFrame(list(popularity.items()), POP_SCHEMA)

    got = beyond_accuracy(_recs(spark, lists), _ads(spark, ads), popularity=pop_df, total_users=50)
    want = brute_force(lists, ads, popularity, 50)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    assert all(type(v) is float for v in got.values())


def test_identical_lists_even_advertisers(spark) -> None:
    ads = {"a1": ("shoes", "adv1", [1.0, 0.0]), "a2": ("books", "adv2", [0.0, 2.0])}
    pop = spark.createDataFrame([("a1", 2)], POP_SCHEMA)
    got = beyond_accuracy(_recs(spark, {"u1": ["a1", "a2"], "u2": ["a2", "a1"]}), _ads(spark, ads),
                          popularity=pop, total_users=4)
    assert got["personalization"] == pytest.approx(0.0, abs=1e-12)
    assert got["gini_advertiser"] == pytest.approx(0.0)
    assert got["top_advertiser_share"] == pytest.approx(0.5)
    assert got["ild_category"] == pytest.approx(1.0)
    assert got["ild_embedding"] == pytest.approx(1.0)  # orthogonal
    assert got["coverage"] == pytest.approx(1.0)
    # a1: p = 2/4 -> 1 bit; a2 never seen: p = 1/5
    assert got["novelty"] == pytest.approx((1 + math.log2(5)) / 2)


def test_disjoint_lists_single_item_user_and_idle_advertiser(spark) -> None:
    ads = {"a1": ("x", "adv1", None), "a2": ("x", "adv2", None), "a3": ("x", "adv2", None),
           "a4": ("y", "adv3", None)}
    got = beyond_accuracy(_recs(spark, {"u1": ["a1"], "u2": ["a2", "a3"]}), _ads(spark, ads),
                          embedding_col=None, catalog_size=10)
    assert got["personalization"] == pytest.approx(1.0)
    assert got["ild_category"] == pytest.approx(0.0)  # only u2 has a pair, same category
    assert math.isnan(got["ild_embedding"]) and math.isnan(got["novelty"])
    assert got["coverage"] == pytest.approx(0.3)
    # counts per advertiser [1, 2, 0] -> sorted [0, 1, 2]: (-2*0 + 0*1 + 2*2) / (3 * 3)
    assert got["gini_advertiser"] == pytest.approx(4 / 9)
    assert got["top_advertiser_share"] == pytest.approx(2 / 3)
    assert (got["n_users"], got["n_recommendations"]) == (2.0, 3.0)


def test_single_user(spark, caplog) -> None:
    ads = {"a1": ("x", "adv1", [1.0, 1.0]), "a2": ("y", "adv1", [2.0, 2.0])}
    with caplog.at_level(logging.WARNING, logger="adrec_spark.evaluation.beyond"):
        got = beyond_accuracy(_recs(spark, {"u1": ["a1", "a2"]}), _ads(spark, ads))
    assert math.isnan(got["personalization"])
    assert "at least 2 users" in caplog.text
    assert got["ild_embedding"] == pytest.approx(0.0, abs=1e-12)  # parallel vectors
    assert got["gini_advertiser"] == pytest.approx(0.0) and got["top_advertiser_share"] == 1.0


def test_gini_from_histogram_by_hand() -> None:
    assert gini_from_histogram({5: 4}) == pytest.approx(0.0)
    assert gini_from_histogram({0: 3, 12: 1}) == pytest.approx(3 / 4)  # (n - 1) / n: all to one
    assert math.isnan(gini_from_histogram({}))


ADS = {"a1": ("x", "adv1", [1.0, 0.0]), "a2": ("y", "adv2", [0.0, 1.0])}


@pytest.mark.parametrize(("lists", "message"), [
    ({}, "recs has no rows"),
    ({"u1": ["a1", "a1"]}, "1 duplicate"),
    ({"u1": ["a1", "zz"]}, "1 recommendation(s) of ads missing from the ads table (e.g. zz)"),
])
def test_bad_recs_are_rejected(spark, lists, message) -> None:
    with pytest.raises(InputDataError, match=re.escape(message)):
        beyond_accuracy(_recs(spark, lists), _ads(spark, ADS))


def test_bad_embeddings_are_rejected(spark) -> None:
    ads = {"a1": ("x", "adv1", [0.0, 0.0]), "a2": ("y", "adv2", [0.0, 1.0])}
    with pytest.raises(InputDataError, match=r"1 recommendation.*all zeros"):
        beyond_accuracy(_recs(spark, {"u1": ["a1", "a2"]}), _ads(spark, ads))


def test_duplicated_catalog_and_impossible_popularity_are_rejected(spark) -> None:
    recs = _recs(spark, {"u1": ["a1", "a2"]})
    twice = _ads(spark, ADS).unionByName(_ads(spark, {"a1": ADS["a1"]}))
    with pytest.raises(InputDataError, match="ads lists 1 'ad_id' value"):
        beyond_accuracy(recs, twice)
    pop = spark.createDataFrame([("a1", 7)], POP_SCHEMA)
    with pytest.raises(InputDataError, match="above total_users=5"):
        beyond_accuracy(recs, _ads(spark, ADS), popularity=pop, total_users=5)


def test_missing_columns_and_bad_arguments(spark) -> None:
    recs = _recs(spark, {"u1": ["a1"]})
    ads = _ads(spark, ADS)
    with pytest.raises(MissingColumnsError, match="advertiser_id"):
        beyond_accuracy(recs, ads.drop("advertiser_id"))
    with pytest.raises(MissingColumnsError, match="embedding"):
        beyond_accuracy(recs, ads.drop("embedding"))
    with pytest.raises(MissingColumnsError, match="user_id"):
        beyond_accuracy(recs.drop("user_id"), ads)
    with pytest.raises(ValueError, match="together"):
        beyond_accuracy(recs, ads, popularity=spark.createDataFrame([("a1", 1)], POP_SCHEMA))
    with pytest.raises(ValueError, match="catalog_size"):
        beyond_accuracy(recs, ads, catalog_size=0)
