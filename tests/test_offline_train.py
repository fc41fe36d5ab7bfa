"""Fine-tuning from exported Parquet without Spark or MLflow (adrec_spark.model.offline_train) on a tiny BERT:
the whole recipe in a process where pyspark and mlflow cannot be imported, its scores against the trainer's
own test predictions and an independent zero-shot cosine, the half-precision carry of the base model, and the
settings it refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from adrec_spark import schema as S
from adrec_spark.errors import ConfigError, TrainingDataError
from adrec_spark.model import offline_train as OT
from tests.pairs import make_pairs
from tests.tiny_bert import make_tiny_bert

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("pyspark", "mlflow", "py4j")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny"))


def write_export(root: Path, *, n: tuple[int, int, int] = (192, 64, 64)) -> Path:
    """Train/valid/test folders as export_splits writes them: the pair columns, ids and event time."""
    for i, (split, rows) in enumerate(zip((S.TRAIN, S.VALID, S.TEST), n, strict=True)):
        df = make_pairs(rows, seed=10 + i)
        df[S.EVENT_ID] = [f"{split}-e{j:04d}" for j in range(rows)]
        df[S.EVENT_TS] = np.arange(rows, dtype=np.float64) + 1000.0 * i
        (root / split).mkdir(parents=True)
        half = rows // 2  # two files, as Spark writes them
        df.iloc[:half].to_parquet(root / split / "part-0.parquet", index=False)
        df.iloc[half:].to_parquet(root / split / "part-1.parquet", index=False)
    return root


def write_params(path: Path, **kw: object) -> Path:
    params = {"max_length": 48, "epochs": 2, "batch_size": 16, "eval_batch_size": 32, "learning_rate": 5e-4,
              "head_learning_rate": 1e-2, "log_every_steps": 5, "precision": "fp32", "early_stopping_patience": 0,
              "shuffle_buffer_rows": 100, "base_model_dir": "model", "extra": {"dataset": "inline"}} | kw
    path.write_text(json.dumps(params))
    return path


BLOCKER = """
import sys
sys.path.insert(0, {fake!r})
sys.path.insert(1, {root!r})
from adrec_spark.model import offline_train
code = offline_train.main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
print("LOADED", loaded)
sys.exit(code)
"""


def _blocked_packages(folder: Path) -> Path:
    """Packages named pyspark, mlflow and py4j that fail on import, first on the path: any import of the real
    ones in the run fails it."""
    for name in BLOCKED:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    return folder


def test_recipe_runs_without_spark_or_mlflow_and_scores_every_test_row(tiny, tmp_path) -> None:
    carry = tmp_path / "carry"
    data = write_export(carry / "data")
    OT.half_precision_copy(tiny, carry / "model")  # the base model as it travels
    params = write_params(carry / "params.json")
    script = tmp_path / "run.py"
    script.write_text(BLOCKER.format(fake=str(_blocked_packages(tmp_path / "fake")), root=str(ROOT),
                                     blocked=BLOCKED))
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run([sys.executable, str(script), "--data", str(data), "--params", str(params), "--out",
                           str(out), "--work", str(work)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout

    scores = pd.read_parquet(out / OT.SCORES_FILE)
    test = pd.concat([pd.read_parquet(data / S.TEST / f"part-{k}.parquet") for k in (0, 1)], ignore_index=True)
    assert list(scores.columns) == list(OT.SCORE_COLUMNS)
    assert scores[S.EVENT_ID].tolist() == test[S.EVENT_ID].tolist()
    assert scores[S.LABEL].tolist() == test[S.LABEL].tolist()
    # The trainer scored the same rows its own way (tokenize_pairs on CPU): the scorer must agree with it.
    trainer = np.load(work / "train" / "test_predictions.npz")
    np.testing.assert_allclose(scores["score"], trainer["score"], atol=1e-5)
    from sklearn.metrics import roc_auc_score

    summary = json.loads((out / OT.SUMMARY_FILE).read_text())
    assert roc_auc_score(test[S.LABEL], scores["score"]) == pytest.approx(summary["test"]["auc"], abs=1e-6)
    assert summary["test"]["auc"] > 0.9  # the topics in make_pairs are learnable
    assert summary["examples"] == 192 and summary["epochs"] == 2 and summary["tokens"] == 48
    assert summary["examples_seen"] == 2 * (192 // 16) * 16
    assert summary["device"].startswith("cpu") and summary["minutes"] > 0
    assert summary["dataset"] == "inline" and summary["rows"] == {"train": 192, "valid": 64, "test": 64}
    assert [h["step"] for h in summary["validation_curve"]] == [0, 12, 24]
    assert summary["pretrained_test_auc"] == pytest.approx(roc_auc_score(test[S.LABEL], scores["pretrained"]))


def test_a_model_reading_the_text_similarity_features_scores_its_test_rows(tiny, tmp_path) -> None:
    """The test rows are read with the numeric features the trained model reads (here the text-similarity
    ones too), and scored as the trainer scores them."""
    carry = tmp_path / "carry"
    data = write_export(carry / "data", n=(64, 32, 32))
    rng = np.random.default_rng(3)
    for f in sorted(data.rglob("*.parquet")):
        df = pd.read_parquet(f)
        for c in S.TEXT_SIMILARITY_FEATURES:
            df[c] = rng.uniform(-1, 1, len(df)).astype(np.float32)
        df.to_parquet(f, index=False)
    OT.half_precision_copy(tiny, carry / "model")
    params = write_params(carry / "params.json", epochs=1, text_similarity_features=True)
    summary = OT.run(params, data=data, out=tmp_path / "out", work=tmp_path / "work", zero_shot=False)
    assert summary["params"]["text_similarity_features"] is True
    scores = pd.read_parquet(tmp_path / "out" / OT.SCORES_FILE)
    trainer = np.load(tmp_path / "work" / "train" / "test_predictions.npz")
    assert len(scores) == 32
    np.testing.assert_allclose(scores["score"], trainer["score"], atol=1e-5)


def _mean_pooled(folder: Path, texts: list[str], max_length: int) -> np.ndarray:
    """Independent reference: plain transformers, mean over the attention mask, L2-normalised."""
    from transformers import AutoModel, AutoTokenizer

    tok, enc = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    for text in texts:
        x = tok([text], truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            h = enc(**x).last_hidden_state[0]
        v = h.mean(dim=0).numpy()
        out.append(v / np.linalg.norm(v))
    return np.stack(out)


def test_zero_shot_scores_are_the_pretrained_cosine(tiny, tmp_path) -> None:
    from adrec_spark.model.encoder import load_tokenizer
    from adrec_spark.model.relevance import ModelSpec, build_model

    data = write_export(tmp_path / "data", n=(32, 16, 16))
    spec = ModelSpec(list(S.NUMERIC_FEATURES), [0.0] * 6, [1.0] * 6, max_length=48, base_model=str(tiny))
    model_dir = build_model(tiny, spec, seed=0).save(tmp_path / "model", load_tokenizer(tiny))
    scores = OT.score_test_rows(model_dir, data / S.TEST, device="cpu", batch_size=8, base_model_dir=tiny,
                                max_length=48)
    test = pd.concat([pd.read_parquet(data / S.TEST / f"part-{k}.parquet") for k in (0, 1)], ignore_index=True)
    ref = (_mean_pooled(tiny, test[S.HISTORY_TEXT].tolist(), 48)
           * _mean_pooled(tiny, test[S.AD_TEXT].tolist(), 48)).sum(axis=1)
    np.testing.assert_allclose(scores["pretrained"], ref, atol=1e-5)
    assert ((scores["score"] > 0) & (scores["score"] < 1)).all()


def test_half_precision_copy_travels_small_and_trains_in_fp32(tiny, tmp_path) -> None:
    from safetensors.torch import load_file

    info = OT.half_precision_copy(tiny, tmp_path / "half")
    original = load_file(tiny / "model.safetensors")
    half = load_file(tmp_path / "half" / "model.safetensors")
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < 0.6 * (tiny / "model.safetensors").stat().st_size
    for name, tensor in original.items():
        if tensor.is_floating_point():
            assert half[name].dtype == torch.float16
        else:  # integer buffers (position ids) stay as they were
            assert half[name].dtype == tensor.dtype and torch.equal(half[name], tensor)
    worst = max(float((half[k].float() - v).abs().max()) for k, v in original.items() if v.is_floating_point())
    assert info["max_abs_rounding_error"] == pytest.approx(worst) and 0 < worst < 1e-2
    assert (tmp_path / "half" / "vocab.txt").is_file() and (tmp_path / "half" / "config.json").is_file()

    wide = OT.fp32_model_dir(tmp_path / "half", tmp_path / "work")
    assert wide != tmp_path / "half" and OT.safetensors_dtypes(wide / "model.safetensors") <= {"F32", "I64"}
    from adrec_spark.model.encoder import load_encoder

    encoder = load_encoder(wide)
    assert {p.dtype for p in encoder.parameters()} == {torch.float32}
    assert OT.fp32_model_dir(tiny, tmp_path / "work2") == tiny  # already fp32: used as it is


def test_settings_it_cannot_honour_are_errors(tiny, tmp_path) -> None:
    data = write_export(tmp_path / "data", n=(32, 16, 16))
    with pytest.raises(ConfigError, match="unknown training setting"):
        OT.read_params(write_params(tmp_path / "a.json", epochz=3), data=data, work=tmp_path / "w", base_model=tiny)
    with pytest.raises(ConfigError, match="no MLflow"):
        OT.read_params(write_params(tmp_path / "b.json", tracking_uri="sqlite:///x.db"), data=data,
                       work=tmp_path / "w", base_model=tiny)
    (tmp_path / "c.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        OT.read_params(tmp_path / "c.json", data=data, work=tmp_path / "w", base_model=tiny)
    p = OT.read_params(write_params(tmp_path / "d.json"), data=data, work=tmp_path / "w", base_model=tiny)
    assert p.data_dir == str(data) and p.base_model_dir == str(tiny) and p.tracking_uri is None
    p = OT.read_params(write_params(tmp_path / "d.json"), data=data, work=tmp_path / "w", base_model=tiny,
                       overrides=OT.parse_sets(["max_length=96", "learning_rate=1e-4", "lora=true"]))
    assert (p.model.max_length, p.train.learning_rate, p.train.lora) == (96, 1e-4, True)
    with pytest.raises(ConfigError, match=r"unknown training setting\(s\) \['max_lenght'\]"):
        OT.read_params(write_params(tmp_path / "d.json"), data=data, work=tmp_path / "w", base_model=tiny,
                       overrides=OT.parse_sets(["max_lenght=96"]))
    assert OT.parse_sets(["learning_rate=1e-4", "loss=mse", "max_steps=null"]) == {
        "learning_rate": 1e-4, "loss": "mse", "max_steps": None}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        OT.parse_sets(["max_length"])
    (tmp_path / "nodata").mkdir()
    with pytest.raises(TrainingDataError, match="no train split"):
        OT.check_splits(tmp_path / "nodata")
    assert OT.main(["--data", str(tmp_path / "nodata"), "--params", str(tmp_path / "d.json"), "--out",
                    str(tmp_path / "o")]) == 2
