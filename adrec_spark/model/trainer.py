"""Fine-tuning loop (plain PyTorch; no Spark): AdamW with warm-up and linear decay, weight decay, gradient
clipping, early stopping on validation AUC, what-to-train options and LoRA, bf16 autocast where the
hardware has it, fixed seeds, checkpoints and resume, DistributedDataParallel when launched by torchrun
(Spark's TorchDistributor). :func:`train_worker` is the function each training process runs.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from adrec_spark import schema as S
from adrec_spark.config import ModelConfig, TrainConfig, build_section
from adrec_spark.errors import TrainingDataError
from adrec_spark.io import fs
from adrec_spark.model.data import Batch, PairDataset
from adrec_spark.model.encoder import load_tokenizer
from adrec_spark.model.inference import cpu_supports_bf16, length_sorted_batches, tokenize_pairs
from adrec_spark.model.relevance import ModelSpec, RelevanceModel, build_model, load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainParams:
    """Everything one training process needs: the run's locations and the typed ``train`` and ``model`` config
    sections as they are; JSON-serialisable so it crosses process boundaries."""

    data_dir: str
    out_dir: str
    base_model_dir: str
    checkpoint_dir: str
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init_model_dir: str | None = None
    resume: bool = False
    # Stop as if interrupted after this many steps (checkpoint kept): for time-boxed runs and resume tests.
    halt_after_steps: int | None = None
    tracking_uri: str | None = None
    run_id: str | None = None
    # Labels that travel with the run (e.g. the dataset's name in an offline run); training never reads them.
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainParams:
        raw = json.loads(text)
        return cls(**raw | {"train": build_section(TrainConfig, raw["train"], "train"),
                            "model": build_section(ModelConfig, raw["model"], "model")})


class EvalMetrics(TypedDict):
    auc: float
    log_loss: float
    n: float


class TrainSummary(TypedDict, total=False):
    """What :func:`train_worker` returns (rank 0 has it all; ``test`` and ``model_dir`` only when finished,
    ``halted`` only when stopped by ``halt_after_steps``, ``pretrained_test`` only with the zero-shot run)."""

    rank: int
    world_size: int
    device: str
    precision: str
    train_rows: int
    steps_per_epoch: int
    total_steps: int
    pretrained_test: dict[str, float]
    global_step: int
    epochs_run: int
    best_valid_auc: float
    initial_valid_auc: float
    history: list[dict[str, float]]
    stopped_early: bool
    train_seconds: float
    samples_per_sec: float
    halted: bool
    test: EvalMetrics
    model_dir: str


# --- helpers ------------------------------------------------------------------------------------------------


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def binary_metrics(labels: np.ndarray, scores: np.ndarray) -> EvalMetrics:
    """AUC and log-loss of probabilities ``scores`` (NaN AUC when one class is missing)."""
    from sklearn.metrics import log_loss, roc_auc_score

    labels = np.asarray(labels, dtype=np.float64)
    scores = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    two_classes = len(np.unique(labels)) == 2
    return EvalMetrics(auc=float(roc_auc_score(labels, scores)) if two_classes else float("nan"),
                       log_loss=float(log_loss(labels, scores, labels=[0, 1])) if len(labels) else float("nan"),
                       n=float(len(labels)))


def mean_ndcg_at_k(users: np.ndarray, items: np.ndarray, labels: np.ndarray, scores: np.ndarray, *,
                   k: int) -> float:
    """Mean per-user NDCG@k, as the evaluation job's ``ndcg@K``: one candidate per (user, item) (relevant if any
    of its rows is a click, scored by the mean score), each user's items ranked by score (ties by item id),
    gain ``label / log2(rank + 1)`` over the top ``k`` against the ideal order; users without a click are
    skipped. NaN when no user has one."""
    frame = pd.DataFrame({"u": np.asarray(users).astype(str), "i": np.asarray(items).astype(str),
                          "y": np.asarray(labels, dtype=np.float64), "s": np.asarray(scores, dtype=np.float64)})
    per_item = frame.groupby(["u", "i"], sort=False).agg(y=("y", "max"), s=("s", "mean")).reset_index()
    per_item = per_item.sort_values(["u", "s", "i"], ascending=[True, False, True], kind="stable")
    values = []
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    for _, group in per_item.groupby("u", sort=False):
        gains = group["y"].to_numpy()
        if gains.sum() <= 0:
            continue
        top = gains[:k]
        ideal = np.sort(gains)[::-1][:k]
        values.append(float((top * discount[:len(top)]).sum() / (ideal * discount[:len(ideal)]).sum()))
    return float(np.mean(values)) if values else float("nan")


def _autocast(device: str, precision: str) -> AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return nullcontext()


def resolve_train_precision(precision: str, device: str) -> str:
    if precision == "auto":
        if device.startswith("cuda"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_supports_bf16() else "fp32"
    return precision


def _dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def apply_trainable(model: RelevanceModel, t: TrainConfig) -> RelevanceModel:
    """Freeze what should not train; wrap the encoder with LoRA adapters when asked."""
    if t.lora:
        from peft import LoraConfig, get_peft_model

        targets = ["query", "key", "value"]
        model.encoder = get_peft_model(model.encoder, LoraConfig(
            r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout, target_modules=targets, bias="none"))
        return model
    if t.trainable == "head":
        for param in model.encoder.parameters():
            param.requires_grad = False
    elif t.trainable == "top_k":
        for param in model.encoder.parameters():
            param.requires_grad = False
        layers = model.encoder.encoder.layer
        for layer in layers[max(0, len(layers) - t.top_k_layers):]:
            for param in layer.parameters():
                param.requires_grad = True
    return model


def merge_lora(model: RelevanceModel) -> RelevanceModel:
    """Fold LoRA adapters into the encoder weights so that saved models need no peft at inference."""
    if hasattr(model.encoder, "merge_and_unload"):
        model.encoder = model.encoder.merge_and_unload()
    return model


def make_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; encoder and head get their own learning rates; no weight decay on biases and LayerNorms."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_encoder = name.startswith("encoder.")
        no_decay = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
        groups.setdefault((is_encoder, no_decay), []).append(param)
    if not groups:
        raise TrainingDataError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW([
        {"params": params, "lr": t.learning_rate if enc else t.head_learning_rate,
         "weight_decay": 0.0 if no_decay else t.weight_decay}
        for (enc, no_decay), params in groups.items()])


def _loss_fn(loss: str) -> nn.Module:
    return nn.BCEWithLogitsLoss() if loss == "bce" else nn.MSELoss()


def _targets(batch: Batch, loss: str) -> torch.Tensor:
    if loss == "bce":
        return torch.from_numpy(batch.label)
    return torch.from_numpy(np.clip(batch.relevance / 2.0, 0.0, 1.0))


def _forward(model: nn.Module, tokenizer: object, batch: Batch, device: str, max_length: int,
             return_parts: bool = False) -> torch.Tensor:
    enc = tokenize_pairs(tokenizer, batch.ad_text, batch.history_text, max_length)
    return model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                 token_type_ids=enc.get("token_type_ids").to(device) if "token_type_ids" in enc else None,
                 numeric=torch.from_numpy(batch.numeric).to(device), return_parts=return_parts)


def pairwise_ranking_loss(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean of ``log(1 + exp(-(s_i - s_j)))`` over pairs (i, j) of the same group with ``label_i > label_j``
    (RankNet's loss); zero, still attached to the graph, when the batch has no such pair."""
    mask = (groups[:, None] == groups[None, :]) & (labels[:, None] > labels[None, :])
    if not bool(mask.any()):
        return scores.sum() * 0.0
    diff = scores[:, None] - scores[None, :]
    return torch.nn.functional.softplus(-diff[mask]).mean()


@torch.no_grad()
def predict(model: RelevanceModel, tokenizer: object, data: Batch, *, batch_size: int, device: str,
            precision: str, max_length: int) -> np.ndarray:
    """Probabilities for every row of ``data`` (length-sorted micro-batches, eval mode)."""
    was_training = model.training
    model.eval()
    out = np.empty(len(data), dtype=np.float32)
    lengths = [len(a) + len(h) for a, h in zip(data.ad_text, data.history_text, strict=True)]
    for idx in length_sorted_batches(lengths, batch_size):
        sub = Batch([data.ad_text[i] for i in idx], [data.history_text[i] for i in idx], data.numeric[idx],
                    data.label[idx], data.relevance[idx], {})
        with _autocast(device, precision):
            logits = _forward(model, tokenizer, sub, device, max_length)
        out[idx] = torch.sigmoid(logits.float()).cpu().numpy()
    model.train(was_training)
    return out


def zero_shot_scores(base_model_dir: str, data: Batch, *, batch_size: int, max_length: int) -> np.ndarray:
    """The pretrained model before fine-tuning: cosine similarity of history and ad embeddings."""
    from adrec_spark.model.inference import Embedder

    emb = Embedder(base_model_dir, batch_size=batch_size, max_length=max_length)
    a, h = emb.embed(data.ad_text), emb.embed(data.history_text)
    return (a * h).sum(axis=1)


# --- checkpoints --------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_auc: float = -1.0
    evals_without_improvement: int = 0
    last_eval_step: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


def save_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler,
                    state: TrainState, best_state: dict[str, torch.Tensor] | None) -> None:
    """Write the checkpoint to ``path`` (a local path or a storage URI), whole or not at all."""
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "state": asdict(state), "best": best_state,
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                        "python": random.getstate()}}, buf)
    fs.write_bytes(path, buf.getvalue())  # a temporary file, then a move: never a half checkpoint


def load_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: LRScheduler) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    ckpt = torch.load(io.BytesIO(fs.read_bytes(path)), map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    np.random.set_state(ckpt["rng"]["numpy"])
    random.setstate(ckpt["rng"]["python"])
    return TrainState(**ckpt["state"]), ckpt["best"]


# --- the loop -------------------------------------------------------------------------------------------------


class _MetricSink:
    """Per-step/epoch metrics to MLflow from rank 0 (no-op without a run)."""

    def __init__(self, p: TrainParams, rank: int) -> None:
        self.client = None
        if rank == 0 and p.tracking_uri and p.run_id:
            from mlflow.tracking import MlflowClient

            self.client, self.run_id = MlflowClient(p.tracking_uri), p.run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        ts = int(time.time() * 1000)
        from mlflow.entities import Metric

        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()
                                                    if v is not None and math.isfinite(float(v))])


def init_wide_from_linear(model: RelevanceModel, train: PairDataset, loss: str) -> dict[str, float]:
    """Set the model's wide term to a regression on the standardized numeric features of ``train`` (logistic
    on the labels for ``bce``, ridge on the graded relevance for ``mse``) and zero the fused head's output, so
    the model starts as that classical model; returns the fitted coefficients by feature."""
    from sklearn.linear_model import LogisticRegression, Ridge

    numeric, label, relevance = train.numeric_and_targets()
    mean, std = model.num_mean.double().cpu().numpy(), model.num_std.double().cpu().numpy()
    z = (numeric - mean) / std
    if loss == "mse":
        fit = Ridge(alpha=1.0).fit(z, relevance)
        weight, bias = np.ravel(fit.coef_), float(np.ravel(fit.intercept_)[0])
    else:
        fit = LogisticRegression(C=1.0, max_iter=1000).fit(z, label)
        weight, bias = fit.coef_[0], float(fit.intercept_[0])
    with torch.no_grad():
        model.wide.weight.copy_(torch.as_tensor(weight, dtype=model.wide.weight.dtype).view(1, -1))
        model.wide.bias.fill_(bias)
        model.head.weight.zero_()
        model.head.bias.zero_()
    return {**dict(zip(model.spec.numeric_features, map(float, weight), strict=True)), "intercept": bias}


def _check_data(train: PairDataset, batch_size: int, world_size: int) -> None:
    neg, pos = train.label_counts()
    if train.num_rows == 0:
        raise TrainingDataError(f"the training split at {train.path} is empty")
    if neg == 0 or pos == 0:
        raise TrainingDataError(f"the training split has a single class ({pos} positives, {neg} negatives): "
                                "a click model needs both")
    if train.steps_per_epoch(batch_size, world_size) == 0:
        raise TrainingDataError(f"{train.num_rows} training rows are fewer than one batch of {batch_size} "
                                f"per process ({world_size} processes)")


def train_worker(params_json: str) -> TrainSummary:
    """Entry point of one training process (rank from torchrun's environment). Returns rank 0's summary."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = TrainParams.from_json(params_json)
    rank, world, local_rank = _dist_info()
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if p.train.use_gpu and torch.cuda.is_available() else "gloo")
    try:
        return Trainer(p, rank=rank, world=world, local_rank=local_rank).run()
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


@dataclass
class _Splits:
    train: PairDataset  # the rows fine-tuning reads
    valid: Batch
    test: PairDataset
    linear: PairDataset  # the rows the starting logistic regression is fitted on (numeric columns only)


class Trainer:
    """One training process in named steps, in the spirit of transformers' ``Trainer``: :meth:`load_data`,
    :meth:`build_model`, :meth:`build_optimizer`, :meth:`resume`, :meth:`evaluate` (with early stopping and a
    checkpoint), :meth:`train_epoch`, :meth:`finalise`; :meth:`run` chains them."""

    def __init__(self, p: TrainParams, *, rank: int = 0, world: int = 1, local_rank: int = 0) -> None:
        self.p, self.t, self.rank, self.world, self.local_rank = p, p.train, rank, world, local_rank
        self.device = f"cuda:{local_rank}" if p.train.use_gpu and torch.cuda.is_available() else "cpu"
        if p.train.use_gpu and self.device == "cpu":
            log.warning("use_gpu is set but CUDA is not available: training on CPU")
        self.precision = resolve_train_precision(p.train.precision, self.device)
        self.ranking = p.train.ranking_loss_weight > 0
        self.ckpt_path = fs.join(p.checkpoint_dir, "last.pt")
        self.state, self.best_state = TrainState(), None
        self.sink = _MetricSink(p, rank)
        self.loss_fn = _loss_fn(p.train.loss)
        self.samples = 0

    def run(self) -> TrainSummary:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        set_seed(self.t.seed)
        data = self.load_data()
        self.build_model(data)
        self.build_optimizer(data.train)
        self.resume()
        summary = TrainSummary(rank=self.rank, world_size=self.world, device=self.device, precision=self.precision,
                               train_rows=data.train.num_rows, steps_per_epoch=self.steps_per_epoch,
                               total_steps=self.total_steps)
        if self.rank == 0 and self.t.zero_shot_baseline and not self.p.init_model_dir and not self.state.global_step:
            summary["pretrained_test"] = self.zero_shot(data.test.read_all())
        log.info("training: %d rows, %d processes, %d steps/epoch, %d steps, batch %d, %s on %s, trainable=%s%s",
                 data.train.num_rows, self.world, self.steps_per_epoch, self.total_steps, self.t.batch_size,
                 self.precision, self.device, self.t.trainable, " +LoRA" if self.t.lora else "")
        if self.state.last_eval_step < 0:
            # Step 0: the starting model (a logistic regression on the numeric features, or the warm start) is a
            # candidate like any later state, so fine-tuning never returns a model worse on validation than it.
            self.evaluate(data.valid)
        t_start = time.perf_counter()
        stop, halted = self.state.stopped_early, False
        while not stop and not halted and self.state.epoch < self.t.epochs and \
                self.state.global_step < self.total_steps:
            stop, halted = self.train_epoch(data)
        self.state.stopped_early = stop
        elapsed = time.perf_counter() - t_start
        summary |= TrainSummary(
            global_step=self.state.global_step, epochs_run=self.state.epoch, best_valid_auc=self.state.best_auc,
            initial_valid_auc=next((h["valid_auc"] for h in self.state.history if h["step"] == 0), float("nan")),
            history=self.state.history, stopped_early=stop, train_seconds=elapsed,
            samples_per_sec=self.samples / max(elapsed, 1e-9))
        if halted:
            return summary | TrainSummary(halted=True)
        return self.finalise(data.test, summary) if self.rank == 0 else summary

    # --- steps ---------------------------------------------------------------------------------------------

    def load_data(self) -> _Splits:
        """The exported splits, with the numeric features this run's model reads (the splits must hold them)."""
        t, data = self.t, self.p.data_dir  # a local path or a storage URI
        features = self.p.model.numeric_features()
        train = PairDataset(fs.join(data, S.TRAIN), max_rows=t.max_train_rows, newest=True,  # the latest rows
                            extra_columns=(S.USER_ID,) if self.ranking else (), numeric_features=features)
        _check_data(train, t.batch_size, self.world)
        valid = PairDataset(fs.join(data, S.VALID), max_rows=t.max_eval_rows, numeric_features=features).read_all()
        test = PairDataset(fs.join(data, S.TEST), max_rows=t.max_eval_rows, extra_columns=(S.USER_ID, S.AD_ID),
                           numeric_features=features)
        linear_rows = None if t.linear_init_rows is None else max(t.linear_init_rows, train.num_rows)
        linear = PairDataset(fs.join(data, S.TRAIN), max_rows=linear_rows, newest=True, numeric_features=features)
        return _Splits(train, valid, test, linear)

    def build_model(self, data: _Splits) -> None:
        """The warm start, or the pretrained encoder with fresh heads (standardization and the wide term from
        ``data.linear``, see :func:`init_wide_from_linear`); frozen parts and LoRA per
        ``train.trainable``/``train.lora``."""
        p, m = self.p, self.p.model
        features = list(m.numeric_features())
        if p.init_model_dir:
            model, self.tokenizer = load_model(p.init_model_dir)
            log.info("warm start from %s", p.init_model_dir)
            if list(model.spec.numeric_features) != features:
                raise TrainingDataError(f"the model to warm-start from reads the numeric features "
                                        f"{model.spec.numeric_features}, this run's config gives {features} "
                                        "(model.text_similarity_features): train from the pretrained model instead")
        else:
            mean, std = data.linear.numeric_stats()
            spec = ModelSpec(features, mean, std, max_length=m.max_length, pooling=m.pooling,
                             numeric_hidden=m.numeric_hidden, dropout=m.dropout, base_model=p.base_model_dir,
                             user_features=list(m.model_user_features()))
            model, self.tokenizer = build_model(p.base_model_dir, spec, seed=self.t.seed), \
                load_tokenizer(p.base_model_dir)
            if self.t.wide_init == "linear":
                coefs = init_wide_from_linear(model, data.linear, self.t.loss)
                log.info("wide term initialised from a %s regression on the numeric features of %d rows: %s",
                         "ridge" if self.t.loss == "mse" else "logistic", data.linear.num_rows,
                         {k: round(v, 3) for k, v in coefs.items()})
        self.model = apply_trainable(model, self.t).to(self.device)
        self.model.train()
        self.ddp_model: nn.Module = self.model
        if self.world > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.local_rank] if self.device.startswith("cuda") else None,
                find_unused_parameters=self.t.trainable != "all" or self.t.lora)

    def build_optimizer(self, train: PairDataset) -> None:
        """AdamW with linear warm-up and decay over ``min(max_steps, steps per epoch x epochs)`` steps."""
        from transformers import get_linear_schedule_with_warmup

        self.steps_per_epoch = train.steps_per_epoch(self.t.batch_size, self.world)
        self.total_steps = min(self.t.max_steps or 10**12, self.steps_per_epoch * self.t.epochs)
        self.optimizer = make_optimizer(self.model, self.t)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, int(self.t.warmup_ratio * self.total_steps),
                                                         self.total_steps)

    def resume(self) -> None:
        if not self.p.resume:
            return
        if not fs.is_file(self.ckpt_path):
            log.warning("resume asked but no checkpoint at %s: starting fresh", self.ckpt_path)
            return
        self.state, self.best_state = load_checkpoint(self.ckpt_path, self.model, self.optimizer, self.scheduler)
        log.info("resumed from %s at epoch %d step %d (global step %d, best valid AUC %.4f)", self.ckpt_path,
                 self.state.epoch, self.state.step_in_epoch, self.state.global_step, self.state.best_auc)

    def zero_shot(self, test: Batch) -> dict[str, float]:
        """The pretrained model before fine-tuning (zero-shot cosine of history and ad) on the test rows."""
        zs = zero_shot_scores(self.p.base_model_dir, test, batch_size=self.t.eval_batch_size,
                              max_length=self.p.model.max_length)
        auc = binary_metrics(test.label, (zs + 1) / 2)["auc"]
        log.info("pretrained model before fine-tuning (zero-shot cosine): test AUC %.4f", auc)
        return {"auc": auc}

    def evaluate(self, valid: Batch) -> bool:
        """Validation AUC on rank 0, early-stopping bookkeeping, the best state and a checkpoint; True when
        training should stop (broadcast to every rank)."""
        stop = torch.zeros(1)
        state = self.state
        state.last_eval_step = state.global_step
        if self.rank == 0:
            metrics = self.eval_metrics(valid)
            state.history.append({"epochs_done": state.epoch, "step": state.global_step, "valid_auc": metrics["auc"],
                                  "valid_log_loss": metrics["log_loss"]})
            self.sink.log({"valid_auc": metrics["auc"], "valid_log_loss": metrics["log_loss"]}, state.global_step)
            improved = metrics["auc"] > state.best_auc + 1e-6 or math.isnan(state.best_auc)
            if improved:
                state.best_auc = metrics["auc"]
                state.evals_without_improvement = 0
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            else:
                state.evals_without_improvement += 1
            log.info("eval at step %d (epoch %d): valid AUC %.4f, log-loss %.4f%s", state.global_step,
                     state.epoch, metrics["auc"], metrics["log_loss"], " (best)" if improved else "")
            save_checkpoint(self.ckpt_path, self.model, self.optimizer, self.scheduler, state, self.best_state)
            patience = self.t.early_stopping_patience
            if patience and state.evals_without_improvement >= patience:
                log.info("early stopping: no validation improvement in %d evaluations", patience)
                stop[0] = 1
        if self.world > 1:
            import torch.distributed as dist

            dist.broadcast(stop, src=0)
        return bool(stop[0])

    def eval_metrics(self, data: Batch) -> EvalMetrics:
        return binary_metrics(data.label, self.predict(data))

    def predict(self, data: Batch, *, device: str | None = None, precision: str | None = None) -> np.ndarray:
        return predict(self.model, self.tokenizer, data, batch_size=self.t.eval_batch_size,
                       device=device or self.device, precision=precision or self.precision,
                       max_length=self.p.model.max_length)

    def train_step(self, batch: Batch) -> float:
        """One optimiser step on ``batch``; its loss."""
        t = self.t
        with _autocast(self.device, self.precision):
            out = _forward(self.ddp_model, self.tokenizer, batch, self.device, self.p.model.max_length,
                           return_parts=self.ranking)
        logits = out.sum(dim=0) if self.ranking else out
        target = _targets(batch, t.loss).to(self.device)
        loss = self.loss_fn(logits.float() if t.loss == "bce" else torch.sigmoid(logits.float()), target)
        if self.ranking:
            groups = torch.from_numpy(np.unique(batch.extra[S.USER_ID].astype(str), return_inverse=True)[1])
            loss = loss + t.ranking_loss_weight * pairwise_ranking_loss(out[0].float(), target,
                                                                        groups.to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def train_epoch(self, data: _Splits) -> tuple[bool, bool]:
        """The rest of the current epoch (resuming mid-epoch skips the batches already seen: the shuffle is
        seeded), evaluating every ``eval_every_steps`` and at its end; returns (stop early, halted)."""
        t, state = self.t, self.state
        batches: Iterator[Batch] = data.train.batches(
            t.batch_size, shuffle=True, seed=t.seed, epoch=state.epoch, rank=self.rank, world_size=self.world,
            buffer_rows=t.shuffle_buffer_rows, drop_last=True, group_col=S.USER_ID if self.ranking else None,
            groups_per_batch=t.users_per_batch)
        t_start, samples0, window = time.perf_counter(), self.samples, []
        stop = False
        for i, batch in enumerate(batches):
            if i < state.step_in_epoch:
                continue
            window.append(self.train_step(batch))
            state.global_step += 1
            state.step_in_epoch = i + 1
            self.samples += len(batch) * self.world
            if state.global_step % t.log_every_steps == 0 or state.global_step == self.total_steps:
                rate = (self.samples - samples0) / max(time.perf_counter() - t_start, 1e-9)
                log.info("epoch %d step %d/%d: loss %.4f, %.1f samples/s, lr %.2e", state.epoch, state.global_step,
                         self.total_steps, float(np.mean(window)), rate, self.scheduler.get_last_lr()[0])
                self.sink.log({"train_loss": float(np.mean(window)), "samples_per_sec": rate}, state.global_step)
                window = []
            if t.eval_every_steps and state.global_step % t.eval_every_steps == 0:
                stop = self.evaluate(data.valid)
            if self.p.halt_after_steps and state.global_step >= self.p.halt_after_steps:
                log.warning("halting after %d steps as asked; resume from %s", state.global_step, self.ckpt_path)
                if state.last_eval_step != state.global_step:
                    self.evaluate(data.valid)
                return stop, True
            if stop or state.global_step >= self.total_steps:
                break
        if state.step_in_epoch >= self.steps_per_epoch or state.global_step >= self.total_steps:
            state.epoch += 1
            state.step_in_epoch = 0
        if not stop and state.last_eval_step != state.global_step:
            stop = self.evaluate(data.valid)  # the checkpoint records the start of the next epoch
        return stop, False

    def finalise(self, test: PairDataset, summary: TrainSummary) -> TrainSummary:
        """Rank 0: the best state (LoRA merged) saved under ``out_dir/model``, its test predictions and metrics,
        and ``summary.json``."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model = merge_lora(self.model).eval()
        test_all = test.read_all()
        scores = self.predict(test_all, precision="fp32")  # on the training device
        self.model = self.model.to("cpu")
        out = Path(self.p.out_dir)
        self.model.save(out / "model", self.tokenizer)
        np.savez(out / "test_predictions.npz", score=scores, label=test_all.label,
                 user_id=test_all.extra[S.USER_ID].astype(str), ad_id=test_all.extra[S.AD_ID].astype(str))
        summary |= TrainSummary(test=binary_metrics(test_all.label, scores), model_dir=str(out / "model"))
        log.info("fine-tuned model: test AUC %.4f, log-loss %.4f on %d rows; best valid AUC %.4f (step 0: %.4f)",
                 summary["test"]["auc"], summary["test"]["log_loss"], len(test_all), self.state.best_auc,
                 summary["initial_valid_auc"])
        (out / "summary.json").write_text(json.dumps(summary, default=float))
        return summary
