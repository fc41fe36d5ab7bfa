"""Pair assembly from token ids against the tokenizer's own pair encoding, token-budget batching, the GPU
address mapping and the measured CPU precision choice."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adrec_spark import schema as S
from adrec_spark.model.encoder import load_tokenizer, resolve_base_model
from adrec_spark.model.inference import (
    Scorer,
    calibrated_cpu_precision,
    choose_device,
    fastest_faithful_precision,
    token_budget_batches,
    tokenize_pairs,
    torch_ordinal,
)
from adrec_spark.model.pairs import SpecialIds, TokenIds, assemble_pairs, keep_lengths, pair_lengths, tokenize_texts
from adrec_spark.model.relevance import ModelSpec, build_model
from tests.tiny_bert import make_tiny_bert

AWKWARD = [
    ("", ""),
    ("", "clicked: The Matrix (1999) | Toy Story (1995)"),
    ("Great deal on flights", ""),
    ("   ", "\t \n "),
    ("word " * 400, "short history"),
    ("short ad", "word " * 400),
    ("alpha " * 300, "beta " * 280),  # both long, the first longer: the odd token goes to it
    ("alpha " * 280, "beta " * 300),
    ("alpha " * 290, "beta " * 290),  # both long, equal: the odd token goes to the second
    ("Café crème brûlée — naïve 東京 😀", "Amélie (2001) | Trois Couleurs: Bleu (1993) | Ça"),
    ("ad " * 127, "hist " * 126),  # exactly at the limit
    ("ad " * 127, "hist " * 127),  # one over
]


@pytest.fixture(scope="module")
def minilm():
    return load_tokenizer(resolve_base_model("all-MiniLM-L6-v2"))


def _reference(tok, ads, hist, max_length):
    return tok(list(ads), list(hist), truncation="longest_first", max_length=max_length, padding=True,
               return_tensors="np")


def _assembled(tok, ads, hist, max_length):
    return assemble_pairs(tokenize_texts(tok, ads, max_length), tokenize_texts(tok, hist, max_length),
                          SpecialIds.of(tok), max_length)


def _assert_same(ref, got) -> None:
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(getattr(got, key), ref[key], err_msg=key)


@pytest.mark.parametrize("max_length", [256, 64, 9, 4])
def test_assembled_pairs_equal_the_tokenizers_pair_encoding(minilm, max_length) -> None:
    ads, hist = zip(*AWKWARD, strict=True)
    _assert_same(_reference(minilm, ads, hist, max_length), _assembled(minilm, ads, hist, max_length))


def test_each_pair_alone_equals_its_own_encoding(minilm) -> None:
    for ad, h in AWKWARD:  # padded to its own length, not the batch's
        _assert_same(_reference(minilm, [ad], [h], 256), _assembled(minilm, [ad], [h], 256))


def test_tokenize_pairs_is_the_assembly(minilm) -> None:
    ads, hist = zip(*AWKWARD, strict=True)
    enc = tokenize_pairs(minilm, ads, hist, 128)
    ref = _reference(minilm, ads, hist, 128)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(enc[key].numpy(), ref[key])


_text = st.text(alphabet=st.sampled_from(list("ab cdé東😀 .,\t-")), max_size=120)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(_text, _text), min_size=1, max_size=6), max_length=st.integers(4, 40))
def test_assembly_matches_the_tokenizer_on_random_text(minilm, pairs, max_length) -> None:
    ads, hist = zip(*pairs, strict=True)
    _assert_same(_reference(minilm, ads, hist, max_length), _assembled(minilm, ads, hist, max_length))


def test_keep_lengths_by_hand() -> None:
    # max_length 12 leaves 9 tokens: (4, 3) fits; (2, 20) keeps the short one; (11, 12) and (13, 12) halve
    # with the odd token to the longer; (10, 10) gives it to the second.
    k1, k2 = keep_lengths(np.array([4, 2, 11, 13, 10, 0]), np.array([3, 20, 12, 12, 10, 30]), 12)
    assert k1.tolist() == [4, 2, 4, 5, 4, 0]
    assert k2.tolist() == [3, 7, 5, 4, 5, 9]
    with pytest.raises(ValueError, match="max_length"):
        keep_lengths(np.array([1]), np.array([1]), 3)


def test_token_ids_from_arrow_with_nulls_and_full_counts() -> None:
    import pyarrow as pa

    ids = pa.array([[5, 6], None, [], [7, 8, 9]], type=pa.list_(pa.int32())).slice(0)
    t = TokenIds.from_arrow(ids, pa.array([2, None, 0, 40]))
    assert t.lists() == [[5, 6], [], [], [7, 8, 9]]
    assert t.counts.tolist() == [2, 0, 0, 40]
    assert pair_lengths(t, t, 100).tolist() == [7, 3, 3, 3 + 80]
    sliced = TokenIds.from_arrow(pa.array([[1], [2, 3], [4]], type=pa.list_(pa.int32())).slice(1))
    assert sliced.lists() == [[2, 3], [4]]
    with pytest.raises(ValueError, match="count"):
        TokenIds.from_lists([[1, 2]], [1])


def test_take_repeats_and_reorders_texts() -> None:
    t = TokenIds.from_lists([[1, 2, 3], [], [4], [5, 6]], [3, 0, 9, 2])
    got = t.take(np.array([3, 1, 0, 0, 2]))
    assert got.lists() == [[5, 6], [], [1, 2, 3], [1, 2, 3], [4]]
    assert got.counts.tolist() == [2, 0, 3, 3, 9]
    assert len(t.take(np.array([], dtype=np.int64))) == 0


def test_token_budget_batches_cover_each_index_once_within_the_budget() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 200, 500)
    batches = token_budget_batches(lengths, 2048, 64)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    for b in batches:
        assert len(b) <= 64
        assert len(b) == 1 or len(b) * lengths[b].max() <= 2048
    sizes = [len(b) for b in batches]
    assert sizes[0] > sizes[-1]  # short pairs in big batches
    assert [b.tolist() for b in token_budget_batches([5, 500, 7], 100, 8)] == [[0, 2], [1]]  # one pair over


@pytest.mark.parametrize(("address", "visible", "ordinal"), [
    ("2", None, 2), ("2", "", 2), ("5", "3,5", 1), ("3", "3,5", 0), ("7", " 7 ", 0), ("GPU-abc", "GPU-x,GPU-abc", 1),
])
def test_spark_gpu_address_to_torch_ordinal(address, visible, ordinal) -> None:
    assert torch_ordinal(address, visible) == ordinal


def test_task_device_follows_cuda_visible_devices(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert choose_device(["5"], cuda_available=True) == "cuda:1"
    assert choose_device(["5"], cuda_available=True, visible_devices="") == "cuda:5"


def test_address_outside_the_visible_devices(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert torch_ordinal("5", "2") == 0
    assert "not in CUDA_VISIBLE_DEVICES" in caplog.text
    with pytest.raises(ValueError, match="does not list it"):
        torch_ordinal("5", "2,3")
    with pytest.raises(ValueError, match="not a device number"):
        torch_ordinal("GPU-abc", None)


class FakeClock:
    """Each timed call of a precision takes the seconds given for it (start and stop read in pairs)."""

    def __init__(self, seconds: dict[str, float], order: list[str], rounds: int) -> None:
        self.times = list(itertools.accumulate(
            itertools.chain.from_iterable([0.0, seconds[p]] for p in order for _ in range(rounds))))
        self.reads = iter(self.times)

    def __call__(self) -> float:
        return next(self.reads)


def _tiny_scorers(tiny):
    spec = ModelSpec(list(S.NUMERIC_FEATURES), [0.0] * 6, [1.0] * 6, max_length=64)
    return build_model(tiny, spec).eval(), load_tokenizer(tiny)


def test_fastest_faithful_precision_rejects_an_unfaithful_faster_one(tmp_path) -> None:
    model, tok = _tiny_scorers(make_tiny_bert(tmp_path / "tiny"))
    rng = np.random.default_rng(0)
    ads = TokenIds.from_lists([rng.integers(10, 40, 20) for _ in range(24)])
    hist = TokenIds.from_lists([rng.integers(10, 40, 60) for _ in range(24)])
    num = rng.normal(size=(24, 6)).astype(np.float32)
    runners = {}
    for p in ("fp32", "bf16", "int8"):
        s = Scorer(None, model=model, tokenizer=tok, precision=p)
        runners[p] = lambda s=s: np.add(*s.logit_parts_ids(ads, hist, num))
    runners["broken"] = lambda: rng.normal(size=24)  # fast but its scores do not track fp32
    order = list(runners)
    clock = FakeClock({"fp32": 1.0, "bf16": 0.8, "int8": 0.5, "broken": 0.1}, order, rounds=2)
    chosen, trials = fastest_faithful_precision(runners, pairs=24, rounds=2, clock=clock)
    assert chosen == "int8"
    rates = {t.precision: t.pairs_per_second for t in trials}
    assert rates == pytest.approx({"fp32": 24.0, "bf16": 30.0, "int8": 48.0, "broken": 240.0})
    corr = {t.precision: t.correlation for t in trials}
    assert corr["bf16"] >= 0.999 and corr["int8"] >= 0.999 and abs(corr["broken"]) < 0.9
    slow_int8 = FakeClock({"fp32": 1.0, "bf16": 0.8, "int8": 2.0, "broken": 0.1}, order, rounds=2)
    assert fastest_faithful_precision(runners, pairs=24, rounds=2, clock=slow_int8)[0] == "bf16"
    with pytest.raises(ValueError, match="fp32"):
        fastest_faithful_precision({"bf16": runners["bf16"]}, pairs=24)


def test_auto_precision_is_measured_once_and_cached_per_host(tmp_path, caplog) -> None:
    model, tok = _tiny_scorers(make_tiny_bert(tmp_path / "tiny"))
    clock = FakeClock({"fp32": 1.0, "bf16": 3.0, "int8": 0.5}, ["fp32", "bf16", "int8"], rounds=2)
    with caplog.at_level(logging.INFO, logger="adrec_spark.model.inference"):
        chosen = calibrated_cpu_precision(model, SpecialIds.of(tok), threads=1, cache_key=str(tmp_path / "m"),
                                          cache_dir=tmp_path / "cache", clock=clock)
    assert chosen == "int8"
    assert "precision auto on CPU" in caplog.text and "int8 64 pairs/s" in caplog.text
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1

    def no_clock() -> float:
        raise AssertionError("measured again")

    from adrec_spark.model import inference

    inference._CALIBRATED.clear()  # a new worker on the same host reads the file
    assert calibrated_cpu_precision(model, SpecialIds.of(tok), threads=1, cache_key=str(tmp_path / "m"),
                                    cache_dir=tmp_path / "cache", clock=no_clock) == "int8"
    scorer = Scorer(None, model=model, tokenizer=tok, precision="auto",
                    precision_cache=tmp_path / "cache")
    assert scorer.precision in ("fp32", "bf16", "int8")  # no cache key: measured for real, not cached
