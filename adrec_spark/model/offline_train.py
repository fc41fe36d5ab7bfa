"""Fine-tuning from exported Parquet splits, without Spark, Java or MLflow, and the test rows' scores.

For a machine that has torch and transformers but no JVM, no network and no model registry (a GPU box
lent for a while): ``bench/run.py quality-gpu`` exports the train/valid/test splits as the training job
does (:func:`adrec_spark.training.pipeline.export_splits`), writes the training settings as ``params.json``
(the fields of :class:`~adrec_spark.model.trainer.TrainParams`) and a half-precision copy of the base model,
and this module trains on them with the training job's own loop (:func:`~adrec_spark.model.trainer.
train_worker`), then scores every test row with the saved model (:class:`~adrec_spark.model.inference.Scorer`,
as the evaluation job's UDF does) and the pretrained zero-shot baseline. What it writes to ``--out`` is all
the evaluation needs back: ``test_scores.parquet`` (event_id, user_id, ad_id, label, score, rank_score,
pretrained) and ``training_summary.json`` (what training cost and its validation curve). The metrics are
computed where Spark is, by the evaluation job's code (``bench/run.py quality-gpu --ingest DIR``).

    python -m adrec_spark.model.offline_train --data DIR --params params.json --out DIR [--base-model DIR]
        [--set KEY=VALUE ...]

This module must never import pyspark or mlflow (a test imports and runs it with both blocked).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from adrec_spark import schema as S
from adrec_spark.errors import AdrecError, ConfigError, TrainingDataError

if TYPE_CHECKING:
    from adrec_spark.model.trainer import TrainParams, TrainSummary

log = logging.getLogger(__name__)

SCORES_FILE = "test_scores.parquet"
SUMMARY_FILE = "training_summary.json"
SCORE_COLUMNS = (S.EVENT_ID, S.USER_ID, S.AD_ID, S.LABEL, "score", "rank_score", "pretrained")
# Settings that need a tracking server or a test harness: refused rather than silently ignored.
REFUSED_PARAMS = {"tracking_uri": "there is no MLflow here", "run_id": "there is no MLflow here",
                  "halt_after_steps": "an offline run trains to the end"}
HALF_DTYPES = ("float16", "bfloat16")


# --- the base model: carried in half precision, trained in fp32 ---------------------------------------------


def half_precision_copy(src: str | Path, dst: str | Path, *, dtype: str = "float16") -> dict[str, float]:
    """Copy the encoder folder ``src`` (config, tokenizer, ``model.safetensors``) to ``dst`` with its floating
    weights stored in ``dtype`` (half the bytes: what lets MiniLM travel under a size limit); integer buffers
    stay as they are. Returns the bytes written and the largest absolute rounding error."""
    import torch
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    weights = src / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"{src} has no model.safetensors: only safetensors weights can be copied")
    if dtype not in HALF_DTYPES:
        raise ConfigError(f"dtype must be one of {HALF_DTYPES}, got {dtype!r}")
    dst.mkdir(parents=True, exist_ok=True)
    state, half, worst = load_file(weights), {}, 0.0
    for name, tensor in state.items():
        if tensor.is_floating_point():
            h = tensor.to(getattr(torch, dtype))
            if not bool(torch.isfinite(h).all()):
                raise ConfigError(f"weight {name} does not fit in {dtype}")
            worst = max(worst, float((h.float() - tensor.float()).abs().max()) if tensor.numel() else 0.0)
            tensor = h
        half[name] = tensor.contiguous()
    save_file(half, dst / "model.safetensors", metadata={"format": "pt"})
    for f in src.iterdir():
        if f.is_file() and f.name != "model.safetensors" and f.suffix in (".json", ".txt", ".model"):
            shutil.copy2(f, dst / f.name)
    return {"bytes": float(sum(f.stat().st_size for f in dst.iterdir() if f.is_file())),
            "max_abs_rounding_error": worst}


def safetensors_dtypes(path: str | Path) -> set[str]:
    """The tensor dtypes named in a safetensors file's header (``F32``, ``F16``, ``I64``, ...)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def fp32_model_dir(base: str | Path, work: str | Path) -> Path:
    """``base`` itself when its weights are fp32; else an fp32 copy under ``work``. Recent transformers load
    half-precision weights as half-precision parameters, which AdamW cannot fine-tune, so the weights carried
    in half precision are widened before training (the values stay the rounded ones)."""
    from safetensors.torch import load_file, save_file

    base = Path(base)
    weights = base / "model.safetensors"
    if not weights.is_file():
        return base  # other weight formats load in the dtype they were saved in; nothing to widen here
    if not (safetensors_dtypes(weights) & {"F16", "BF16"}):
        return base
    out = Path(work) / "base-model-fp32"
    if (out / "model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in load_file(weights).items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    for f in base.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy2(f, out / f.name)
    log.info("base model weights widened from half precision to fp32 in %s", out)
    return out


# --- settings -----------------------------------------------------------------------------------------------


def flat_params(p: TrainParams) -> dict[str, object]:
    """``p`` as one flat JSON object (what ``params.json`` holds): the ``train`` and ``model`` config fields by
    their names, and the run's own fields (locations, labels)."""
    return {**asdict(p.train), **asdict(p.model), **{k: getattr(p, k) for k in sorted(_run_fields())}}


def _run_fields() -> set[str]:
    from adrec_spark.model.trainer import TrainParams

    return {f.name for f in fields(TrainParams)} - {"train", "model"}


def parse_sets(items: Sequence[str]) -> dict[str, object]:
    """``KEY=VALUE`` settings (``--set``), each value read as JSON (``256``, ``1e-4``, ``true``, ``null``), else as
    YAML (``bce``, ``[a, b]``)."""
    import yaml

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = yaml.safe_load(value)
    return out


def read_params(path: str | Path, *, data: str | Path, work: str | Path, base_model: str | Path | None = None,
                overrides: dict[str, object] | None = None) -> TrainParams:
    """The :class:`TrainParams` in ``path`` (a flat JSON object, see :func:`flat_params`) with ``overrides`` on
    top (the same flat keys), and the data, output, checkpoint and base-model folders of this machine. Unknown
    fields and settings that need MLflow are errors; the config sections check their values as the config
    loader does."""
    from adrec_spark.config import ModelConfig, TrainConfig, build_section
    from adrec_spark.model.trainer import TrainParams

    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read the training settings {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object of training settings")
    raw |= overrides or {}
    run_fields = _run_fields()
    section_fields = {name: {f.name for f in fields(cls)} - run_fields
                      for name, cls in (("train", TrainConfig), ("model", ModelConfig))}
    sections = {name: {k: raw.pop(k) for k in list(raw) if k in names} for name, names in section_fields.items()}
    unknown = sorted(set(raw) - run_fields)
    if unknown:
        known = sorted(run_fields.union(*section_fields.values()))
        raise ConfigError(f"{path}: unknown training setting(s) {unknown}; known: {known}")
    refused = {k: why for k, why in REFUSED_PARAMS.items() if raw.get(k) is not None}
    if refused:
        raise ConfigError(f"{path}: remove {', '.join(f'{k} ({why})' for k, why in refused.items())}")
    base = base_model or raw.get("base_model_dir")
    if not base:
        raise ConfigError(f"no base model: give --base-model or base_model_dir in {path}")
    base = Path(base) if Path(base).is_absolute() or base_model else path.parent / base
    work = Path(work)
    raw |= {"data_dir": str(data), "out_dir": str(work / "train"), "checkpoint_dir": str(work / "checkpoints"),
            "base_model_dir": str(fp32_model_dir(base, work)), "tracking_uri": None, "run_id": None}
    return TrainParams(**raw, train=build_section(TrainConfig, sections["train"], "train"),
                       model=build_section(ModelConfig, sections["model"], "model"))


def check_splits(data: str | Path) -> dict[str, int]:
    """Rows of each exported split under ``data``; an error naming what is missing."""
    import pyarrow.dataset as ds

    rows = {}
    for split in (S.TRAIN, S.VALID, S.TEST):
        folder = Path(data) / split
        if not folder.is_dir():
            raise TrainingDataError(f"no {split} split at {folder}: export the splits first "
                                    "(bench/run.py quality-gpu writes them)")
        rows[split] = ds.dataset(str(folder), format="parquet").count_rows()
    missing = [c for c in (S.EVENT_ID, S.USER_ID, S.AD_ID) if c not in
               ds.dataset(str(Path(data) / S.TEST), format="parquet").schema.names]
    if missing:
        raise TrainingDataError(f"the test split lacks {missing}: the scores could not be matched to the rows")
    return rows


# --- scoring ------------------------------------------------------------------------------------------------


def score_test_rows(model_dir: str | Path, test_dir: str | Path, *, device: str, batch_size: int,
                    base_model_dir: str | Path | None, max_length: int) -> pd.DataFrame:
    """Every test row with the fine-tuned model's click probability (``score``), the pair logit that ranks a
    user's ads (``rank_score``, as the evaluation job's ``model__rank``) and, with ``base_model_dir``, the
    pretrained zero-shot cosine of history and ad (``pretrained``, as the evaluation job's baseline)."""
    from adrec_spark.model.data import PairDataset
    from adrec_spark.model.inference import Embedder, Scorer, sigmoid

    scorer = Scorer(model_dir, device=device, precision="fp32", batch_size=batch_size)
    rows = PairDataset(test_dir, extra_columns=(S.EVENT_ID, S.USER_ID, S.AD_ID),
                       numeric_features=scorer.spec.numeric_features).read_all()  # the features the model reads
    pair, user = scorer.logit_parts(rows.ad_text, rows.history_text, rows.numeric)
    logit = pair.astype(np.float64) + user
    out = pd.DataFrame({S.EVENT_ID: rows.extra[S.EVENT_ID].astype(str), S.USER_ID: rows.extra[S.USER_ID].astype(str),
                        S.AD_ID: rows.extra[S.AD_ID].astype(str), S.LABEL: rows.label.astype(np.int32),
                        "score": sigmoid(logit), "rank_score": pair.astype(np.float64)})
    if base_model_dir is not None:
        emb = Embedder(base_model_dir, batch_size=batch_size, max_length=max_length, device=device)
        out["pretrained"] = (emb.embed(rows.history_text) * emb.embed(rows.ad_text)).sum(axis=1).astype(np.float64)
    if out[S.EVENT_ID].duplicated().any():
        raise TrainingDataError("the test split repeats event ids: its scores could not be matched to its rows")
    return out


# --- the run ------------------------------------------------------------------------------------------------


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} ({device})"
    return f"cpu ({torch.get_num_threads()} torch threads, {os.cpu_count()} cores)"


def cost_summary(p: TrainParams, trained: TrainSummary, *, device: str, wall_seconds: float) -> dict[str, object]:
    """What fine-tuning cost and what it saw, from :func:`train_worker`'s summary."""
    import torch
    import transformers

    seconds = trained["train_seconds"]
    return {"examples": trained["train_rows"], "examples_seen": trained["global_step"] * p.train.batch_size,
            "epochs": trained["epochs_run"], "epochs_planned": p.train.epochs, "tokens": p.model.max_length,
            "batch_size": p.train.batch_size, "minutes": seconds / 60.0, "wall_minutes": wall_seconds / 60.0,
            "device": device_name(device), "precision": trained["precision"],
            "samples_per_sec": trained["samples_per_sec"], "steps": trained["global_step"],
            "stopped_early": trained["stopped_early"], "versions": {
                "python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}}


def run(params_path: str | Path, *, data: str | Path, out: str | Path, work: str | Path | None = None,
        base_model: str | Path | None = None, zero_shot: bool = True,
        overrides: dict[str, object] | None = None) -> dict[str, object]:
    """Train on ``data`` with the settings in ``params_path`` (``overrides`` on top), score the test rows, write
    both files to ``out``; returns the summary. ``work`` (default ``out/work``) holds the model and
    checkpoints."""
    import torch

    from adrec_spark.model.trainer import binary_metrics, train_worker

    t0 = time.perf_counter()
    out = Path(out)
    work = Path(work) if work else out / "work"
    rows = check_splits(data)
    p = read_params(params_path, data=data, work=work, base_model=base_model, overrides=overrides)
    # the zero-shot baseline is scored below, on the training device, with the event ids
    p = replace(p, train=replace(p.train, zero_shot_baseline=False))
    device = "cuda:0" if p.train.use_gpu and torch.cuda.is_available() else "cpu"
    if p.train.use_gpu and device == "cpu":
        log.warning("use_gpu is set but CUDA is not available: training on CPU (slow)")
    log.info("offline fine-tuning on %s: %s rows, %d epochs at %d tokens", device_name(device), rows, p.train.epochs,
             p.model.max_length)
    trained = train_worker(p.to_json())
    if "test" not in trained:
        raise TrainingDataError(f"training ended without a model: {trained}")
    scores = score_test_rows(trained["model_dir"], Path(data) / S.TEST, device=device,
                             batch_size=p.train.eval_batch_size,
                             base_model_dir=p.base_model_dir if zero_shot else None, max_length=p.model.max_length)
    out.mkdir(parents=True, exist_ok=True)
    scores.to_parquet(out / SCORES_FILE, index=False)
    summary: dict[str, object] = {
        "dataset": p.extra.get("dataset"), "rows": rows, **cost_summary(p, trained, device=device,
                                                                      wall_seconds=time.perf_counter() - t0),
        "best_valid_auc": trained["best_valid_auc"], "initial_valid_auc": trained["initial_valid_auc"],
        "validation_curve": trained["history"], "test": trained["test"],
        "pretrained_test_auc": binary_metrics(scores[S.LABEL], (scores["pretrained"] + 1) / 2)["auc"]
        if "pretrained" in scores else None,
        "params": {k: v for k, v in flat_params(p).items() if not k.endswith("_dir")}, "extra": p.extra,
        "overrides": overrides or {}}
    text = json.dumps(summary, indent=2, default=float)
    (out / SUMMARY_FILE).write_text(text)
    log.info("wrote %s (%d test rows) and %s: %d examples x %d epochs at %d tokens in %.1f min on %s; test AUC "
             "%.4f", out / SCORES_FILE, len(scores), out / SUMMARY_FILE, summary["examples"], summary["epochs"],
             p.model.max_length, summary["minutes"], summary["device"], trained["test"]["auc"])
    return summary


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m adrec_spark.model.offline_train", description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="folder with the exported train/, valid/ and test/ Parquet splits")
    ap.add_argument("--params", required=True, help="JSON file of TrainParams fields (params.json)")
    ap.add_argument("--out", required=True, help="where test_scores.parquet and training_summary.json go")
    ap.add_argument("--work", help="model and checkpoints (default: OUT/work); keep it off OUT to bring back less")
    ap.add_argument("--base-model", help="the pretrained encoder folder (default: base_model_dir in params, "
                                         "relative to the params file)")
    ap.add_argument("--no-zero-shot", action="store_true", help="skip the pretrained zero-shot scores")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="change one setting of the params file (repeatable), e.g. --set max_length=256")
    return ap.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args.params, data=args.data, out=args.out, work=args.work, base_model=args.base_model,
            zero_shot=not args.no_zero_shot, overrides=parse_sets(args.sets))
    except AdrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
