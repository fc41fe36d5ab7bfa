"""Text-similarity features: the numpy aggregates against a per-row loop, and the Spark transform against
numpy on embeddings of a deterministic stand-in encoder that records every text it embeds."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from adrec_spark import schema as S
from adrec_spark.model.similarity import cosine_aggregates


def _fake_vector(text: str, dim: int = 8) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).normal(size=dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _recording_encoder(log_file: Path):
    """A picklable stand-in for the pretrained encoder (defined locally, so Spark ships it by value): the same
    vectors as :func:`_fake_vector`, and each text it embeds appended to ``log_file``."""

    @dataclass(frozen=True)
    class Recording:
        path: str

        def load(self):
            path = self.path

            class Embedder:
                def embed(self, texts):
                    with open(path, "a") as f:
                        f.write("".join(t + "\n" for t in texts))
                    out = []
                    for t in texts:
                        seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
                        v = np.random.default_rng(seed).normal(size=8)
                        out.append(v / np.linalg.norm(v))
                    return np.asarray(out, dtype=np.float32)

            return Embedder()

    return Recording(str(log_file))


def test_cosine_aggregates_match_a_loop_over_rows() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(6, 5))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ad = np.array([0, 1, -1, 2])  # row 2 has no ad text
    items = [[3, 4, 3], [], [5], [-1, 5]]  # row 1 has none; row 3 one item without a text
    top, mean, count = cosine_aggregates(vecs, ad, np.concatenate(items), np.repeat(np.arange(4), [3, 0, 1, 2]))
    for r, its in enumerate(items):
        its = [i for i in its if i >= 0]
        cos = [float(vecs[i] @ vecs[ad[r]]) for i in its] if ad[r] >= 0 else []
        assert count[r] == len(its)
        assert top[r] == pytest.approx(max(cos) if cos else 0.0)
        assert mean[r] == pytest.approx(sum(cos) / len(cos) if cos else 0.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        cosine_aggregates(vecs, ad, np.array([3, 4]), np.array([1, 0]))


ROWS = [  # event_id, ad_text, clicked ads' texts, searches, reviews
    ("e1", "trail running shoes", ["marathon watch", "yoga mat"], ["marathon plan"], ["great grip"]),
    ("e2", "yoga mat", ["marathon watch"], [], None),  # a null list: no reviews
    ("e3", "marathon watch", [], [], []),  # no history at all
    ("e4", "trail running shoes", ["yoga mat", "trail running shoes"], ["marathon plan", "cheap flights"], []),
    ("e5", None, ["yoga mat"], ["marathon plan"], []),  # no ad text
]
SCHEMA = ("event_id string, ad_text string, history_click_texts array<string>, history_search_texts array<string>, "
          "history_review_texts array<string>")


def test_features_match_numpy_and_each_distinct_text_is_embedded_once(spark, tmp_path) -> None:
    from adrec_spark.scoring.text_similarity import collect_text_vectors, with_text_similarity

    log_file = tmp_path / "embedded.txt"
    df = spark.createDataFrame(ROWS, SCHEMA).repartition(3)
    other = spark.createDataFrame([("e9", "yoga mat", ["cheap flights"], [], [])], SCHEMA)  # shares texts
    vectors = collect_text_vectors([df, other], _recording_encoder(log_file))
    embedded = log_file.read_text().splitlines()
    distinct = {t for r in [*ROWS, ("e9", "yoga mat", ["cheap flights"], [], [])] for part in r[1:]
                for t in ([part] if isinstance(part, str) else part or [])}
    assert sorted(embedded) == sorted(distinct)  # every distinct text, each exactly once

    got = {r["event_id"]: r for r in with_text_similarity(df, vectors=vectors).collect()}
    assert set(got) == {r[0] for r in ROWS}
    for eid, ad, *kinds in ROWS:
        for (name, texts) in zip(("click", "search", "review"), kinds, strict=True):
            texts = texts or []
            cos = [float(_fake_vector(t) @ _fake_vector(ad)) for t in texts] if ad else []
            row = got[eid]
            assert row[f"{name}_texts"] == len(texts), (eid, name)
            assert row[f"{name}_cos_max"] == pytest.approx(max(cos) if cos else 0.0, abs=1e-6), (eid, name)
            assert row[f"{name}_cos_mean"] == pytest.approx(np.mean(cos) if cos else 0.0, abs=1e-6), (eid, name)
    assert got["e4"]["click_cos_max"] == pytest.approx(1.0, abs=1e-6)  # the ad's own text among the clicks
    assert got["e1"][S.AD_TEXT] == "trail running shoes"  # the input columns pass through


def test_missing_history_columns_are_named(spark) -> None:
    from adrec_spark.errors import InputDataError, MissingColumnsError
    from adrec_spark.scoring.text_similarity import distinct_texts, require_history_texts

    old = spark.createDataFrame(ROWS, SCHEMA).drop(S.HISTORY_REVIEW_TEXTS)
    with pytest.raises(MissingColumnsError, match="history_review_texts"):
        distinct_texts(old)
    with pytest.raises(InputDataError, match=r"training_examples v3 has no history_review_texts .* rerun the ETL"):
        require_history_texts(old, "training_examples v3")
    require_history_texts(spark.createDataFrame(ROWS, SCHEMA), "training_examples v4")  # all there: no error
