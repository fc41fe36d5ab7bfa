"""The relevance model, its data streaming and batch inference, on a tiny BERT built from a config."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from adrec_spark import schema as S
from adrec_spark.errors import MissingColumnsError, ModelResolutionError
from adrec_spark.model.data import PairDataset
from adrec_spark.model.encoder import load_tokenizer, resolve_base_model
from adrec_spark.model.inference import (
    Scorer,
    choose_device,
    length_sorted_batches,
    resolve_precision,
    task_gpu_addresses,
)
from adrec_spark.model.relevance import ModelSpec, build_model, load_model
from tests.pairs import make_pairs, write_splits
from tests.tiny_bert import make_tiny_bert


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny"))


def _spec(**kw) -> ModelSpec:
    return ModelSpec(list(S.NUMERIC_FEATURES), [0.0] * 6, [1.0] * 6, max_length=64, **kw)


def test_model_code_never_imports_spark() -> None:
    code = ("import sys, adrec_spark.model.trainer, adrec_spark.model.inference, adrec_spark.model.data; "
            "print('pyspark' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_resolve_base_model(tiny, tmp_path) -> None:
    assert (resolve_base_model("all-MiniLM-L6-v2") / "config.json").is_file()
    assert resolve_base_model(str(tiny)) == tiny
    with pytest.raises(ModelResolutionError, match=r"no config\.json"):
        resolve_base_model(str(tmp_path))
    with pytest.raises(ModelResolutionError, match="downloads are disabled"):
        resolve_base_model("someone/not-a-cached-model")


def test_save_load_round_trip_gives_the_same_scores(tiny, tmp_path) -> None:
    model = build_model(tiny, _spec(), seed=1).eval()
    tok = load_tokenizer(tiny)
    model.save(tmp_path / "m", tok)
    load_model(tmp_path / "m")  # loads cleanly
    df = make_pairs(20, 3)
    num = df[list(S.NUMERIC_FEATURES)].to_numpy()
    a = Scorer(None, model=model, tokenizer=tok).score(df[S.AD_TEXT], df[S.HISTORY_TEXT], num)
    b = Scorer(tmp_path / "m").score(df[S.AD_TEXT], df[S.HISTORY_TEXT], num)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert ((a > 0) & (a < 1)).all()


def test_scores_do_not_depend_on_batching_or_order(tiny) -> None:
    model, tok = build_model(tiny, _spec(), seed=2).eval(), load_tokenizer(tiny)
    df = make_pairs(33, 4)
    num = df[list(S.NUMERIC_FEATURES)].to_numpy()
    one = Scorer(None, model=model, tokenizer=tok, batch_size=1).score(df[S.AD_TEXT], df[S.HISTORY_TEXT], num)
    many = Scorer(None, model=model, tokenizer=tok, batch_size=8).score(df[S.AD_TEXT], df[S.HISTORY_TEXT], num)
    np.testing.assert_allclose(one, many, atol=1e-5)
    perm = np.random.default_rng(0).permutation(len(df))
    shuffled = Scorer(None, model=model, tokenizer=tok, batch_size=8).score(
        df[S.AD_TEXT].to_numpy()[perm], df[S.HISTORY_TEXT].to_numpy()[perm], num[perm])
    np.testing.assert_allclose(shuffled, many[perm], atol=1e-5)


def test_numeric_features_move_the_score(tiny) -> None:
    model, tok = build_model(tiny, _spec(), seed=3).eval(), load_tokenizer(tiny)
    with torch.no_grad():
        model.wide.weight.fill_(0.0)
        model.wide.weight[0, S.NUMERIC_FEATURES.index(S.AD_RATE)] = 2.0
    s = Scorer(None, model=model, tokenizer=tok)
    low = s.score(["deal"], ["clicked: deal"], [[0, 0, 0, 0, 0, 0]])
    high = s.score(["deal"], ["clicked: deal"], [[0, 0, 3, 0, 0, 0]])
    assert high[0] > low[0]


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precisions_track_fp32(tiny, precision) -> None:
    model, tok = build_model(tiny, _spec(), seed=4).eval(), load_tokenizer(tiny)
    df = make_pairs(64, 5)
    num = df[list(S.NUMERIC_FEATURES)].to_numpy()
    ref = Scorer(None, model=model, tokenizer=tok).logits(df[S.AD_TEXT], df[S.HISTORY_TEXT], num)
    got = Scorer(None, model=model, tokenizer=tok, precision=precision).logits(df[S.AD_TEXT], df[S.HISTORY_TEXT],
                                                                              num)
    assert np.corrcoef(ref, got)[0, 1] > 0.99


def test_empty_input_and_mismatched_lengths(tiny) -> None:
    s = Scorer(None, model=build_model(tiny, _spec()).eval(), tokenizer=load_tokenizer(tiny))
    assert s.score([], [], np.zeros((0, 6))).shape == (0,)
    with pytest.raises(ValueError, match="2 ad texts but 1 histories"):
        s.score(["a", "b"], ["x"], np.zeros((2, 6)))
    # missing history and NaN features are scored, not crashed on
    assert s.score(["a"], [None], [[np.nan] * 6]).shape == (1,)


def test_length_sorted_batches_cover_every_index_once() -> None:
    lengths = [5, 1, 9, 3, 3, 7, 2]
    batches = length_sorted_batches(lengths, 3)
    assert [list(b) for b in batches] == [[1, 6, 3], [4, 0, 5], [2]]


@pytest.mark.parametrize(("flags", "kind"), [
    ("fpu avx512f avx512_bf16 amx_bf16 amx_tile", "amx"),
    ("fpu avx512f avx512_bf16 avx512_vnni", "avx512bf16"),
    ("fpu avx2 fma", "nobf16"),
    (None, "nobf16"),  # /proc/cpuinfo unreadable
])
def test_cpu_bf16_kind_from_the_cpu_flags(monkeypatch, flags, kind) -> None:
    from adrec_spark.model import inference

    class FakePath:
        def __init__(self, _path: str) -> None:
            pass

        def read_text(self) -> str:
            if flags is None:
                raise OSError("no /proc here")
            return f"processor : 0\nflags : {flags}\n"

    monkeypatch.setattr(inference, "Path", FakePath)
    assert inference.cpu_bf16_kind() == kind
    assert inference.cpu_supports_bf16() == (kind != "nobf16")


def test_device_and_precision_choice(monkeypatch) -> None:
    from adrec_spark.model import inference

    assert choose_device([], cuda_available=True) == "cpu"
    assert choose_device(["1"], cuda_available=True) == "cuda:1"
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        assert choose_device(["0"], cuda_available=False) == "cpu"
    assert resolve_precision("auto", "cuda:0") == "bf16"
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "int8"
    assert resolve_precision("int8", "cuda:0") == "bf16"
    with pytest.raises(ValueError):
        resolve_precision("fp8", "cpu")

    class Info:
        addresses = ("3", "4")

    assert task_gpu_addresses({"gpu": Info()}) == ["3", "4"]
    assert task_gpu_addresses({}) == [] and task_gpu_addresses(None) == []


def test_pair_dataset_streams_shards_and_shuffles(tmp_path) -> None:
    root = write_splits(tmp_path, n_train=100, files_per_split=3)
    data = PairDataset(root / S.TRAIN)
    assert data.num_rows == 100
    plain = [b for b in data.batches(16)]
    assert [len(b) for b in plain] == [16] * 6 + [4]
    got = np.concatenate([b.numeric[:, 2] for b in plain])
    np.testing.assert_allclose(got, make_pairs(100, 0)[S.AD_RATE].to_numpy(), rtol=1e-6)
    # two ranks: disjoint shards, same number of batches with drop_last
    r0 = list(data.batches(16, shuffle=True, seed=1, rank=0, world_size=2, drop_last=True, buffer_rows=30))
    r1 = list(data.batches(16, shuffle=True, seed=1, rank=1, world_size=2, drop_last=True, buffer_rows=30))
    assert len(r0) == len(r1) == data.steps_per_epoch(16, 2) == 3
    seen0 = {t for b in r0 for t in b.numeric[:, 0]}  # user_rate: a distinct random value per row
    seen1 = {t for b in r1 for t in b.numeric[:, 0]}
    assert not seen0 & seen1
    # the shuffle is seeded by (seed, epoch)
    again = list(data.batches(16, shuffle=True, seed=1, rank=0, world_size=2, drop_last=True, buffer_rows=30))
    assert all((a.numeric == b.numeric).all() for a, b in zip(r0, again, strict=True))
    other = list(data.batches(16, shuffle=True, seed=1, epoch=1, rank=0, world_size=2, drop_last=True,
                              buffer_rows=30))
    assert any((a.numeric != b.numeric).any() for a, b in zip(r0, other, strict=True))
    mean, std = data.numeric_stats()
    assert mean[2] == pytest.approx(float(make_pairs(100, 0)[S.AD_RATE].mean()), rel=1e-5)
    assert len(std) == 6


def test_pair_dataset_keeps_the_first_or_the_newest_rows(tmp_path) -> None:
    root = write_splits(tmp_path, n_train=100, files_per_split=3)  # 3 files: the cut crosses file boundaries
    want = make_pairs(100, 0)[S.AD_RATE].to_numpy()
    first = PairDataset(root / S.TRAIN, max_rows=70).read_all()
    np.testing.assert_allclose(first.numeric[:, 2], want[:70], rtol=1e-6)
    newest = PairDataset(root / S.TRAIN, max_rows=70, newest=True)
    assert newest.num_rows == 70
    np.testing.assert_allclose(newest.read_all().numeric[:, 2], want[30:], rtol=1e-6)
    streamed = np.concatenate([b.numeric[:, 2] for b in newest.batches(16)])
    np.testing.assert_allclose(streamed, want[30:], rtol=1e-6)
    everything = PairDataset(root / S.TRAIN, max_rows=500, newest=True).read_all()
    np.testing.assert_allclose(everything.numeric[:, 2], want, rtol=1e-6)


def test_pair_dataset_names_missing_columns(tmp_path) -> None:
    (tmp_path / "x").mkdir()
    make_pairs(5, 0).drop(columns=[S.AD_TEXT]).to_parquet(tmp_path / "x" / "p.parquet")
    with pytest.raises(MissingColumnsError, match="ad_text"):
        PairDataset(tmp_path / "x")


def test_gpu_warning_is_a_runtime_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        choose_device(["0"], cuda_available=False)
    assert caught and issubclass(caught[0].category, RuntimeWarning)


USER_ONLY = [S.USER_RATE, S.USER_LOG_IMPRESSIONS]


def test_user_only_features_enter_only_an_additive_user_bias(tiny) -> None:
    """The pair logit ignores the user-only features; the user term depends on nothing else; the logit is their
    sum, so a user's ads scored with one set of user features rank the same by either."""
    model, tok = build_model(tiny, _spec(user_features=USER_ONLY), seed=3).eval(), load_tokenizer(tiny)
    with torch.no_grad():  # a non-trivial head, not the zero start
        model.head.weight.normal_(0, 0.5)
    scorer = Scorer(None, model=model, tokenizer=tok)
    df = make_pairs(24, 5)
    num = df[list(S.NUMERIC_FEATURES)].to_numpy()
    pair, user = scorer.logit_parts(df[S.AD_TEXT], df[S.HISTORY_TEXT], num)
    np.testing.assert_allclose(scorer.logits(df[S.AD_TEXT], df[S.HISTORY_TEXT], num), pair + user, atol=1e-5)
    moved = num.copy()
    for f in USER_ONLY:
        moved[:, S.NUMERIC_FEATURES.index(f)] += np.linspace(-3, 3, len(df))
    pair2, user2 = scorer.logit_parts(df[S.AD_TEXT], df[S.HISTORY_TEXT], moved)
    np.testing.assert_allclose(pair2, pair, atol=1e-5)
    assert np.abs(user2 - user).max() > 1e-3
    # by hand: the user term is the wide weights of the user-only features times their standardized values
    w = model.wide.weight.detach().numpy()[0]
    idx = [S.NUMERIC_FEATURES.index(f) for f in USER_ONLY]
    np.testing.assert_allclose(user, num[:, idx] @ w[idx], rtol=1e-5, atol=1e-5)
    # everything else moves the pair logit
    other = num.copy()
    other[:, S.NUMERIC_FEATURES.index(S.AD_RATE)] += 2.0
    assert np.abs(scorer.logit_parts(df[S.AD_TEXT], df[S.HISTORY_TEXT], other)[0] - pair).max() > 1e-3
    # one user's candidates at one moment: identical user features, identical order
    same_user = np.repeat(num[:1], len(df), axis=0)
    same_user[:, S.NUMERIC_FEATURES.index(S.AD_RATE)] = num[:, S.NUMERIC_FEATURES.index(S.AD_RATE)]
    p, u = scorer.logit_parts(df[S.AD_TEXT], df[S.HISTORY_TEXT], same_user)
    assert np.ptp(u) < 1e-6
    assert list(np.argsort(-(p + u), kind="stable")) == list(np.argsort(-p, kind="stable"))


def test_the_logit_is_a_text_part_that_reads_only_tokens_plus_a_numeric_part(tiny) -> None:
    """The head's concatenation written out by hand: head(cat(pooled, mlp(z_pair))) + wide(z_pair) equals the
    text logit (tokens alone) plus the numeric pair part; so a pair's text logit survives any change of its
    numeric features (what incremental scoring carries over)."""
    model, tok = build_model(tiny, _spec(user_features=USER_ONLY), seed=5).eval(), load_tokenizer(tiny)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)
        model.head.bias.fill_(0.3)
    scorer = Scorer(None, model=model, tokenizer=tok)
    df = make_pairs(20, 4)
    num = df[list(S.NUMERIC_FEATURES)].to_numpy().astype(np.float32)
    ads, hist = scorer.tokenize(df[S.AD_TEXT]), scorer.tokenize(df[S.HISTORY_TEXT])
    text = scorer.text_logits_ids(ads, hist)
    pair_num, user = scorer.numeric_logit_parts(num)
    with torch.no_grad():  # the reference: the head over the concatenation, as the model was first written
        enc = tok(list(df[S.AD_TEXT]), list(df[S.HISTORY_TEXT]), truncation="longest_first", max_length=64,
                  padding=True, return_tensors="pt")
        pooled = model.pool(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        z = (torch.from_numpy(num) - model.num_mean) / model.num_std
        z_pair = z * (1 - model.user_mask)
        want = (model.head(torch.cat([pooled, model.num_mlp(z_pair)], dim=-1)) + model.wide(z_pair)).squeeze(-1)
    np.testing.assert_allclose(text + pair_num, want.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.add(*scorer.logit_parts_ids(ads, hist, num)), text + pair_num + user, atol=1e-5)
    moved = num + np.linspace(-2, 2, len(df), dtype=np.float32)[:, None]
    np.testing.assert_allclose(scorer.logit_parts_ids(ads, hist, moved)[0] - scorer.numeric_logit_parts(moved)[0],
                               text, atol=1e-5)


def test_without_user_features_the_user_term_is_zero(tiny, tmp_path) -> None:
    model, tok = build_model(tiny, _spec(), seed=4).eval(), load_tokenizer(tiny)
    df = make_pairs(10, 6)
    num = df[list(S.NUMERIC_FEATURES)].to_numpy()
    pair, user = Scorer(None, model=model, tokenizer=tok).logit_parts(df[S.AD_TEXT], df[S.HISTORY_TEXT], num)
    assert np.all(user == 0)
    model.save(tmp_path / "m", tok)  # a model saved before user_features existed loads the same way
    spec = (tmp_path / "m" / "spec.json")
    spec.write_text(spec.read_text().replace('"user_features": [],', ""))
    assert "user_features" not in spec.read_text()
    np.testing.assert_allclose(Scorer(tmp_path / "m").logit_parts(df[S.AD_TEXT], df[S.HISTORY_TEXT], num)[0], pair,
                               atol=1e-5)


def test_unknown_user_feature_is_a_clear_error(tiny) -> None:
    with pytest.raises(ValueError, match="not among the numeric features"):
        build_model(tiny, _spec(user_features=["user_shoe_size"]))


def test_ad_index_partition_embeds_each_ad_and_scores_its_prior_at_each_affinity_level(tiny, tmp_path) -> None:
    """One pass per ad: the embedding and, per affinity level, the score for an empty history with the
    category-match feature at that level, the same as scoring those inputs directly."""
    import pandas as pd

    from adrec_spark.model_udf import UdfSettings
    from adrec_spark.scoring.stages import ad_index_partition

    model, tok = build_model(tiny, _spec(), seed=6).eval(), load_tokenizer(tiny)
    model.save(tmp_path / "m", tok)
    df = make_pairs(9, 4)[[S.AD_ID, S.AD_TEXT, *S.NUMERIC_FEATURES]].reset_index(drop=True)
    settings = UdfSettings(model_file=str(tmp_path / "m"), precision="fp32")
    frames = [df.iloc[:5], df.iloc[5:0], df.iloc[5:]]  # an empty frame in between is skipped
    levels = [0.0, 0.5, 1.0]
    out = pd.concat(list(ad_index_partition(iter(frames), settings=settings, numeric_features=list(S.NUMERIC_FEATURES),
                                            match_feature=S.CATEGORY_MATCH, levels=levels)), ignore_index=True)
    assert out["ad_id"].tolist() == df[S.AD_ID].tolist()
    ref = Scorer(tmp_path / "m", precision="fp32")
    np.testing.assert_allclose(np.stack(out["embedding"]), ref.embed(df[S.AD_TEXT]), atol=1e-5)
    prior = np.stack(out["prior"])
    assert prior.shape == (9, 3)
    for j, level in enumerate(levels):
        num = df[list(S.NUMERIC_FEATURES)].to_numpy(np.float32).copy()
        num[:, list(S.NUMERIC_FEATURES).index(S.CATEGORY_MATCH)] = level
        np.testing.assert_allclose(prior[:, j], ref.score(df[S.AD_TEXT], [""] * 9, num), atol=1e-5)
    assert not np.allclose(prior[:, 0], prior[:, 2])  # the level reaches the model
    no_prior = next(ad_index_partition(iter([df]), settings=settings, numeric_features=list(S.NUMERIC_FEATURES),
                                       match_feature=S.CATEGORY_MATCH, levels=None))
    assert no_prior["prior"].isna().all() and len(no_prior) == 9
