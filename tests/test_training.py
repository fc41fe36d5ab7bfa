"""The fine-tuning loop on a tiny BERT: learns, is reproducible, stops early, resumes, rejects bad data."""

from __future__ import annotations

import json
import math
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
import torch

from adrec_spark import schema as S
from adrec_spark.config import ModelConfig, TrainConfig
from adrec_spark.errors import TrainingDataError
from adrec_spark.model.data import PairDataset
from adrec_spark.model.encoder import load_tokenizer
from adrec_spark.model.trainer import TrainParams, train_worker
from tests.pairs import make_pairs, write_splits
from tests.tiny_bert import make_tiny_bert


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("pairs"), n_train=320, n_valid=128, n_test=128)


def _params(tiny, splits, tmp, **kw) -> TrainParams:
    """Settings by name, each sent to its section (``model`` or ``train``) or to the run's own fields."""
    settings = dict(max_length=48, epochs=3, batch_size=16, eval_batch_size=64, learning_rate=5e-4,
                    head_learning_rate=1e-2, warmup_ratio=0.1, log_every_steps=5, precision="fp32",
                    early_stopping_patience=0, shuffle_buffer_rows=100, zero_shot_baseline=False) | kw
    sections = {name: {k: settings.pop(k) for k in list(settings) if k in {f.name for f in fields(cls)}}
                for name, cls in (("model", ModelConfig), ("train", TrainConfig))}
    return TrainParams(data_dir=str(splits), out_dir=str(tmp / "out"), base_model_dir=str(tiny),
                       checkpoint_dir=str(tmp / "ckpt"), model=ModelConfig(**sections["model"]),
                       train=TrainConfig(**sections["train"]), **settings)


def test_learns_and_saves_a_loadable_model(tiny, splits, tmp_path) -> None:
    out = train_worker(_params(tiny, splits, tmp_path, zero_shot_baseline=True).to_json())
    assert out["global_step"] == 3 * (320 // 16)
    assert out["test"]["auc"] > 0.9, out["test"]
    assert out["best_valid_auc"] > 0.9
    assert 0.0 <= out["pretrained_test"]["auc"] <= 1.0
    saved = np.load(tmp_path / "out" / "test_predictions.npz")
    assert saved["score"].shape == (128,) and set(saved["label"]) == {0.0, 1.0}
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["test"]["auc"] == out["test"]["auc"]
    from adrec_spark.model.inference import Scorer

    df = make_pairs(128, 2)  # the test split's seed in write_splits
    again = Scorer(out["model_dir"]).score(df[S.AD_TEXT], df[S.HISTORY_TEXT], df[list(S.NUMERIC_FEATURES)])
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(df[S.LABEL], again) == pytest.approx(out["test"]["auc"], abs=1e-6)


def test_same_seed_same_metrics(tiny, splits, tmp_path) -> None:
    a = train_worker(_params(tiny, splits, tmp_path / "a", epochs=1).to_json())
    b = train_worker(_params(tiny, splits, tmp_path / "b", epochs=1).to_json())
    c = train_worker(_params(tiny, splits, tmp_path / "c", epochs=1, seed=7).to_json())
    assert a["test"] == b["test"] and a["history"] == b["history"]
    assert a["test"] != c["test"]


def test_early_stopping_when_validation_stops_improving(tiny, splits, tmp_path) -> None:
    # learning rates ~0: validation AUC never improves after the first evaluation
    out = train_worker(_params(tiny, splits, tmp_path, learning_rate=1e-12, head_learning_rate=1e-12, epochs=50,
                               eval_every_steps=2, early_stopping_patience=2).to_json())
    assert out["stopped_early"] is True
    assert out["global_step"] == 4  # evals at steps 0 (best), 2, 4 -> two without improvement
    assert len(out["history"]) == 3


def test_resume_continues_where_it_stopped(tiny, splits, tmp_path) -> None:
    full = train_worker(_params(tiny, splits, tmp_path / "full", epochs=2, eval_every_steps=5).to_json())
    halted = train_worker(_params(tiny, splits, tmp_path / "cut", epochs=2, eval_every_steps=5,
                                  halt_after_steps=27).to_json())
    assert halted["halted"] is True and halted["global_step"] == 27
    resumed = train_worker(_params(tiny, splits, tmp_path / "cut", epochs=2, eval_every_steps=5,
                                   resume=True).to_json())
    assert resumed["global_step"] == full["global_step"] == 40
    assert resumed["test"]["auc"] == pytest.approx(full["test"]["auc"], abs=1e-9)
    assert resumed["test"]["log_loss"] == pytest.approx(full["test"]["log_loss"], abs=1e-6)


@pytest.mark.parametrize("options", [{"trainable": "head"}, {"trainable": "top_k", "top_k_layers": 1},
                                     {"lora": True, "lora_r": 4}, {"loss": "mse"},
                                     {"ranking_loss_weight": 1.0, "users_per_batch": 4,
                                      "user_features": [S.USER_RATE, S.USER_LOG_IMPRESSIONS]}])
def test_training_options(tiny, splits, tmp_path, options) -> None:
    out = train_worker(_params(tiny, splits, tmp_path, epochs=2, **options).to_json())
    assert out["test"]["auc"] > 0.8, (options, out["test"])
    from adrec_spark.model.relevance import load_model

    model, _ = load_model(out["model_dir"])  # LoRA is merged: loads without peft
    assert not any("lora" in k for k in model.state_dict())


def test_bf16_autocast_trains(tiny, splits, tmp_path) -> None:
    out = train_worker(_params(tiny, splits, tmp_path, epochs=1, precision="bf16").to_json())
    assert out["precision"] == "bf16" and out["test"]["auc"] > 0.7


def _write_train(root, df: pd.DataFrame) -> None:
    for split in (S.TRAIN, S.VALID, S.TEST):
        (root / split).mkdir(parents=True, exist_ok=True)
        (df if split == S.TRAIN else make_pairs(16, 1)).to_parquet(root / split / "p.parquet", index=False)


def test_bad_training_sets_are_clear_errors(tiny, tmp_path) -> None:
    one_class = make_pairs(64, 0).assign(**{S.LABEL: 1})
    _write_train(tmp_path / "one", one_class)
    with pytest.raises(TrainingDataError, match="single class"):
        train_worker(_params(tiny, tmp_path / "one", tmp_path).to_json())
    _write_train(tmp_path / "empty", make_pairs(64, 0).iloc[:0])
    with pytest.raises(TrainingDataError, match="empty"):
        train_worker(_params(tiny, tmp_path / "empty", tmp_path).to_json())
    _write_train(tmp_path / "small", make_pairs(8, 0))
    with pytest.raises(TrainingDataError, match="fewer than one batch"):
        train_worker(_params(tiny, tmp_path / "small", tmp_path).to_json())
    with pytest.raises(TrainingDataError, match="no training data"):
        train_worker(_params(tiny, tmp_path / "nothing", tmp_path).to_json())


@pytest.mark.parametrize("user_features", [[], [S.USER_RATE, S.USER_LOG_IMPRESSIONS]])
def test_wide_term_starts_as_a_logistic_regression_on_the_numeric_features(tiny, splits, user_features) -> None:
    """Before any step the model's output is sklearn's logistic regression on the standardized numeric features
    (the text path starts at zero), so fine-tuning learns the residual over that classical model."""
    from sklearn.linear_model import LogisticRegression

    from adrec_spark.model.relevance import ModelSpec, build_model
    from adrec_spark.model.trainer import _forward, init_wide_from_linear

    data = PairDataset(splits / S.TRAIN)
    mean, std = data.numeric_stats()
    spec = ModelSpec(list(S.NUMERIC_FEATURES), mean, std, max_length=64, user_features=user_features)
    model = build_model(tiny, spec, seed=0).eval()
    coefs = init_wide_from_linear(model, data, "bce")
    batch = data.read_all()
    z = (batch.numeric.astype(np.float64) - np.array(mean)) / np.array(std)
    ref = LogisticRegression(C=1.0, max_iter=1000).fit(z, batch.label)
    np.testing.assert_allclose([coefs[f] for f in S.NUMERIC_FEATURES], ref.coef_[0], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        logits = _forward(model, load_tokenizer(tiny), batch, "cpu", 64).numpy()
    np.testing.assert_allclose(logits, ref.decision_function(z), rtol=1e-4, atol=1e-4)


def test_pairwise_ranking_loss_by_hand() -> None:
    from adrec_spark.model.trainer import pairwise_ranking_loss

    scores = torch.tensor([2.0, 0.0, 1.0, 3.0], requires_grad=True)
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 1, 2])
    # one pair: rows 0 > 1 in group 0 (row 2 and 3 are alone in theirs): log(1 + e^-2)
    loss = pairwise_ranking_loss(scores, labels, groups)
    assert float(loss.detach()) == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-6)
    loss.backward()
    assert scores.grad[2] == 0 and scores.grad[3] == 0 and scores.grad[0] < 0 < scores.grad[1]
    # two pairs in one group: mean of log(1 + e^-(s_i - s_j))
    both = pairwise_ranking_loss(torch.tensor([1.0, 0.5, -1.0]), torch.tensor([1.0, 0.0, 0.0]),
                                 torch.tensor([0, 0, 0]))
    assert float(both) == pytest.approx((math.log1p(math.exp(-0.5)) + math.log1p(math.exp(-2.0))) / 2, rel=1e-6)
    none = pairwise_ranking_loss(scores, torch.ones(4), groups)
    assert float(none) == 0.0 and none.requires_grad


def test_user_grouped_batches_cover_every_row_once_with_few_users(tmp_path) -> None:
    from adrec_spark.model.data import grouped_order

    rng = np.random.default_rng(0)
    keys = np.array([f"u{i % 10}" for i in range(200)], dtype=object)
    order = grouped_order(keys, rng, 8)
    assert sorted(order.tolist()) == list(range(200))
    users_per_run = [len(set(keys[order[i:i + 32]])) for i in range(0, 200 - 31, 32)]
    assert max(users_per_run) <= 8 and np.mean(users_per_run) <= 6  # 4 runs of 8 -> about 4 users, vs 10 shuffled
    data = PairDataset(write_splits(tmp_path, n_train=160) / S.TRAIN, extra_columns=(S.USER_ID,))
    batches = list(data.batches(16, shuffle=True, seed=1, group_col=S.USER_ID, groups_per_batch=2, buffer_rows=80))
    assert sum(len(b) for b in batches) == 160
    again = list(data.batches(16, shuffle=True, seed=1, group_col=S.USER_ID, groups_per_batch=2, buffer_rows=80))
    assert [b.ad_text for b in batches] == [b.ad_text for b in again]
    with pytest.raises(ValueError, match="extra columns"):
        next(PairDataset(tmp_path / S.TRAIN).batches(16, shuffle=True, group_col=S.USER_ID))


def test_training_never_returns_a_model_worse_on_validation_than_its_start(tiny, splits, tmp_path) -> None:
    """Huge learning rates wreck the model: the returned model is the starting one (step 0), whose validation
    AUC is sklearn's logistic regression on the standardized numeric features (the text path at zero)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from adrec_spark.model.inference import Scorer

    out = train_worker(_params(tiny, splits, tmp_path, epochs=1, learning_rate=5.0, head_learning_rate=50.0,
                               warmup_ratio=0.0, eval_every_steps=5).to_json())
    train, valid = PairDataset(splits / S.TRAIN).read_all(), PairDataset(splits / S.VALID).read_all()
    mean, std = train.numeric.astype(np.float64).mean(axis=0), train.numeric.astype(np.float64).std(axis=0)
    std = np.where(std > 0, std, 1.0)
    lr = LogisticRegression(C=1.0, max_iter=1000).fit((train.numeric - mean) / std, train.label)
    start_auc = roc_auc_score(valid.label, lr.decision_function((valid.numeric - mean) / std))
    history = out["history"]
    assert history[0]["step"] == 0
    assert out["initial_valid_auc"] == pytest.approx(start_auc, abs=1e-4)
    assert max(h["valid_auc"] for h in history[1:]) < start_auc - 0.01, history  # training did get worse
    returned = Scorer(out["model_dir"]).score(valid.ad_text, valid.history_text, valid.numeric)
    assert roc_auc_score(valid.label, returned) == pytest.approx(out["initial_valid_auc"], abs=1e-6)
    assert out["best_valid_auc"] == pytest.approx(out["initial_valid_auc"], abs=1e-9)


def _write_text_splits(root, seed: int = 0):
    """Pairs whose label follows ``click_cos_max`` alone (the text-similarity features as the ETL's transform
    would give them), in the three splits."""
    rng = np.random.default_rng(seed)
    for split, n in ((S.TRAIN, 320), (S.VALID, 96), (S.TEST, 96)):
        df = make_pairs(n, rng.integers(1 << 30))
        for c in S.TEXT_SIMILARITY_FEATURES:
            df[c] = rng.uniform(0, 1, n) if "cos" in c else rng.integers(0, 4, n).astype(float)
        df[S.LABEL] = df[S.RELEVANCE] = (rng.uniform(0, 1, n) < 0.05 + 0.9 * (df["click_cos_max"] > 0.5)).astype(
            np.int32)
        (root / split).mkdir(parents=True, exist_ok=True)
        df.to_parquet(root / split / "p.parquet", index=False)
    return root


def test_the_model_reads_the_text_similarity_features_when_its_params_name_them(tiny, tmp_path) -> None:
    from adrec_spark.errors import MissingColumnsError
    from adrec_spark.model.inference import Scorer

    data = _write_text_splits(tmp_path / "text")
    features = [*S.NUMERIC_FEATURES, *S.TEXT_SIMILARITY_FEATURES]
    with pytest.raises(MissingColumnsError, match="click_cos_max"):
        PairDataset(write_splits(tmp_path / "plain", n_train=32, n_valid=16, n_test=16) / S.TRAIN,
                    numeric_features=features)
    batch = PairDataset(data / S.TRAIN, numeric_features=features).read_all()
    want = pd.read_parquet(data / S.TRAIN / "p.parquet")[features].to_numpy(np.float32)
    np.testing.assert_array_equal(batch.numeric, want)

    out = train_worker(_params(tiny, data, tmp_path, epochs=1, text_similarity_features=True).to_json())
    assert out["test"]["auc"] > 0.8  # the label follows a text-similarity feature: the model reads it
    scorer = Scorer(out["model_dir"])
    assert scorer.spec.numeric_features == features
    test = pd.read_parquet(data / S.TEST / "p.parquet")
    lo, hi = test[features].to_numpy(np.float32).copy(), test[features].to_numpy(np.float32).copy()
    lo[:, features.index("click_cos_max")], hi[:, features.index("click_cos_max")] = 0.0, 1.0
    texts = (test[S.AD_TEXT].tolist(), test[S.HISTORY_TEXT].tolist())
    assert (scorer.score(*texts, hi) > scorer.score(*texts, lo)).all()
    with pytest.raises(TrainingDataError, match="warm-start"):  # a model with other features cannot be the start
        train_worker(_params(tiny, data, tmp_path / "again", epochs=1, init_model_dir=out["model_dir"]).to_json())


@pytest.mark.parametrize("linear_init_rows, fitted_on", [(None, 320), (64, 64), (8, 32)])
def test_wide_term_is_fitted_on_more_rows_than_fine_tuning_reads(tiny, splits, tmp_path, linear_init_rows,
                                                                  fitted_on) -> None:
    """``train.max_train_rows`` bounds the encoder's passes; the starting logistic regression (numeric columns
    only, cheap) is fitted on the newest ``train.linear_init_rows`` rows (all by default, never fewer than
    fine-tuning reads), so the model starts where a logistic regression on the whole split is."""
    from sklearn.linear_model import LogisticRegression

    from adrec_spark.model.trainer import Trainer

    p = _params(tiny, splits, tmp_path, max_train_rows=32, linear_init_rows=linear_init_rows)
    trainer = Trainer(p)
    data = trainer.load_data()
    trainer.build_model(data)
    assert data.train.num_rows == 32
    rows = PairDataset(splits / S.TRAIN).read_all()
    numeric, label = rows.numeric.astype(np.float64)[-fitted_on:], rows.label[-fitted_on:]  # the newest rows
    mean, std = numeric.mean(axis=0), numeric.std(axis=0)
    ref = LogisticRegression(C=1.0, max_iter=1000).fit((numeric - mean) / np.where(std > 1e-6, std, 1.0), label)
    np.testing.assert_allclose(trainer.model.wide.weight.detach().numpy()[0], ref.coef_[0], rtol=1e-3, atol=1e-5)
