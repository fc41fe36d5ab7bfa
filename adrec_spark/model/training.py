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

import numpy as np
import pandas as pd
import torch
from torch import nn

from adrec_spark import schema as S
from adrec_spark.errors import TrainingDataError
from adrec_spark.io import fs
from adrec_spark.model.data import Batch, PairDataset
from adrec_spark.model.encoder import load_tokenizer
from adrec_spark.model.inference import cpu_supports_bf16, length_sorted_batches, tokenize_pairs
from adrec_spark.model.relevance import ModelSpec, RelevanceModel, build_model, load_model

log = logging.getLogger(__name__)


@dataclass
class TrainParams:
    """Everything one training process needs; JSON-serialisable so it crosses process boundaries."""

    data_dir: str
    out_dir: str
    base_model_dir: str
    checkpoint_dir: str
    init_model_dir: str | None = None
    resume: bool = False
    max_length: int = 256
    pooling: str = "mean"
    dropout: float = 0.1
    numeric_hidden: int = 32
    user_features: list[str] = field(default_factory=list)
    # The model's numeric inputs, in order (config ModelConfig.numeric_features()); the splits must hold them.
    numeric_features: list[str] = field(default_factory=lambda: list(S.NUMERIC_FEATURES))
    loss: str = "bce"
    # Weight of a pairwise logistic loss between rows of the same user with different labels, on the pair logit
    # (what ranks a user's ads); batches then hold about users_per_batch users each. 0: pointwise loss only.
    ranking_loss_weight: float = 0.0
    users_per_batch: int = 4
    learning_rate: float = 5e-5
    head_learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    epochs: int = 2
    batch_size: int = 32
    eval_batch_size: int = 128
    max_steps: int | None = None
    max_train_rows: int | None = None
    max_eval_rows: int | None = None
    early_stopping_patience: int = 2
    eval_every_steps: int | None = None
    trainable: str = "all"
    top_k_layers: int = 2
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    precision: str = "auto"
    seed: int = 42
    use_gpu: bool = False
    log_every_steps: int = 20
    shuffle_buffer_rows: int = 20000
    # Stop as if interrupted after this many steps (checkpoint kept): for time-boxed runs and resume tests.
    halt_after_steps: int | None = None
    zero_shot_baseline: bool = True
    # "linear": start the wide term at a logistic (bce) or ridge (mse) regression on the numeric features and
    # the text path at zero, so fine-tuning learns the residual over that classical model; "random": no fit.
    wide_init: str = "linear"
    tracking_uri: str | None = None
    run_id: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainParams:
        return cls(**json.loads(text))


# --- helpers ------------------------------------------------------------------------------------------------


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def binary_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUC and log-loss of probabilities ``scores`` (NaN AUC when one class is missing)."""
    from sklearn.metrics import log_loss, roc_auc_score

    labels = np.asarray(labels, dtype=np.float64)
    scores = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    two_classes = len(np.unique(labels)) == 2
    return {
        "auc": float(roc_auc_score(labels, scores)) if two_classes else float("nan"),
        "log_loss": float(log_loss(labels, scores, labels=[0, 1])) if len(labels) else float("nan"),
        "n": float(len(labels)),
    }


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


def apply_trainable(model: RelevanceModel, p: TrainParams) -> RelevanceModel:
    """Freeze what should not train; wrap the encoder with LoRA adapters when asked."""
    if p.lora:
        from peft import LoraConfig, get_peft_model

        targets = ["query", "key", "value"]
        model.encoder = get_peft_model(model.encoder, LoraConfig(
            r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout, target_modules=targets, bias="none"))
        return model
    if p.trainable == "head":
        for param in model.encoder.parameters():
            param.requires_grad = False
    elif p.trainable == "top_k":
        for param in model.encoder.parameters():
            param.requires_grad = False
        layers = model.encoder.encoder.layer
        for layer in layers[max(0, len(layers) - p.top_k_layers):]:
            for param in layer.parameters():
                param.requires_grad = True
    return model


def merge_lora(model: RelevanceModel) -> RelevanceModel:
    """Fold LoRA adapters into the encoder weights so that saved models need no peft at inference."""
    if hasattr(model.encoder, "merge_and_unload"):
        model.encoder = model.encoder.merge_and_unload()
    return model


def make_optimizer(model: nn.Module, p: TrainParams) -> torch.optim.Optimizer:
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
        {"params": params, "lr": p.learning_rate if enc else p.head_learning_rate,
         "weight_decay": 0.0 if no_decay else p.weight_decay}
        for (enc, no_decay), params in groups.items()])


def _loss_fn(p: TrainParams) -> nn.Module:
    return nn.BCEWithLogitsLoss() if p.loss == "bce" else nn.MSELoss()


def _targets(batch: Batch, p: TrainParams) -> torch.Tensor:
    if p.loss == "bce":
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


def save_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: object,
                    state: TrainState, best_state: dict[str, torch.Tensor] | None) -> None:
    """Write the checkpoint to ``path`` (a local path or a storage URI), whole or not at all."""
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "state": asdict(state), "best": best_state,  # type: ignore
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                        "python": random.getstate()}}, buf)
    fs.write_bytes(path, buf.getvalue())  # a temporary file, then a move: never a half checkpoint


def load_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: object) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    ckpt = torch.load(io.BytesIO(fs.read_bytes(path)), map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])  # type: ignore[attr-defined]
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


def _eval_split(model: RelevanceModel, tokenizer: object, data: Batch, p: TrainParams, device: str,
                precision: str) -> tuple[dict[str, float], np.ndarray]:
    scores = predict(model, tokenizer, data, batch_size=p.eval_batch_size, device=device, precision=precision,
                     max_length=p.max_length)
    return binary_metrics(data.label, scores), scores


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


def _check_data(train: PairDataset, p: TrainParams, world_size: int) -> None:
    neg, pos = train.label_counts()
    if train.num_rows == 0:
        raise TrainingDataError(f"the training split at {train.path} is empty")
    if neg == 0 or pos == 0:
        raise TrainingDataError(f"the training split has a single class ({pos} positives, {neg} negatives): "
                                "a click model needs both")
    if train.steps_per_epoch(p.batch_size, world_size) == 0:
        raise TrainingDataError(f"{train.num_rows} training rows are fewer than one batch of {p.batch_size} "
                                f"per process ({world_size} processes)")


def _unwrap(model: nn.Module) -> RelevanceModel:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def train_worker(params_json: str) -> dict[str, object]:
    """Entry point of one training process (rank from torchrun's environment). Returns rank 0's summary."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = TrainParams.from_json(params_json)
    rank, world, local_rank = _dist_info()
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if p.use_gpu and torch.cuda.is_available() else "gloo")
    try:
        return _train(p, rank, world, local_rank)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(p: TrainParams, rank: int, world: int, local_rank: int) -> dict[str, object]:
    from transformers import get_linear_schedule_with_warmup
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    set_seed(p.seed)
    device = f"cuda:{local_rank}" if p.use_gpu and torch.cuda.is_available() else "cpu"
    if p.use_gpu and device == "cpu":
        log.warning("use_gpu is set but CUDA is not available: training on CPU")
    precision = resolve_train_precision(p.precision, device)
    data = p.data_dir  # a local path or a storage URI
    ranking = p.ranking_loss_weight > 0
    features = p.numeric_features
    train = PairDataset(fs.join(data, S.TRAIN), max_rows=p.max_train_rows, newest=True,  # the most recent rows
                        extra_columns=(S.USER_ID,) if ranking else (), numeric_features=features)
    _check_data(train, p, world)
    valid = PairDataset(fs.join(data, S.VALID), max_rows=p.max_eval_rows, numeric_features=features).read_all()
    test_set = PairDataset(fs.join(data, S.TEST), max_rows=p.max_eval_rows, extra_columns=(S.USER_ID, S.AD_ID),
                           numeric_features=features)

    if p.init_model_dir:
        model, tokenizer = load_model(p.init_model_dir)
        log.info("warm start from %s", p.init_model_dir)
        if list(model.spec.numeric_features) != list(features):
            raise TrainingDataError(f"the model to warm-start from reads the numeric features "
                                    f"{model.spec.numeric_features}, this run's config gives {list(features)} "
                                    "(model.text_similarity_features): train from the pretrained model instead")
    else:
        mean, std = train.numeric_stats()
        spec = ModelSpec(list(features), mean, std, max_length=p.max_length, pooling=p.pooling,
                         numeric_hidden=p.numeric_hidden, dropout=p.dropout, base_model=p.base_model_dir,
                         user_features=list(p.user_features))
        model, tokenizer = build_model(p.base_model_dir, spec, seed=p.seed), load_tokenizer(p.base_model_dir)
        if p.wide_init == "linear":
            coefs = init_wide_from_linear(model, train, p.loss)
            log.info("wide term initialised from a %s regression on the numeric features: %s",
                     "ridge" if p.loss == "mse" else "logistic", {k: round(v, 3) for k, v in coefs.items()})
    model = apply_trainable(model, p).to(device)
    model.train()
    steps_per_epoch = train.steps_per_epoch(p.batch_size, world)
    total_steps = min(p.max_steps or 10**12, steps_per_epoch * p.epochs)
    optimizer = make_optimizer(model, p)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(p.warmup_ratio * total_steps), total_steps)
    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.startswith("cuda") else None,
            find_unused_parameters=p.trainable != "all" or p.lora)

    ckpt_path = fs.join(p.checkpoint_dir, "last.pt")
    state, best_state = TrainState(), None
    if p.resume and fs.is_file(ckpt_path):
        state, best_state = load_checkpoint(ckpt_path, model, optimizer, scheduler)
        log.info("resumed from %s at epoch %d step %d (global step %d, best valid AUC %.4f)", ckpt_path,
                 state.epoch, state.step_in_epoch, state.global_step, state.best_auc)
    elif p.resume:
        log.warning("resume asked but no checkpoint at %s: starting fresh", ckpt_path)

    summary: dict[str, object] = {"rank": rank, "world_size": world, "device": device, "precision": precision,
                                  "train_rows": train.num_rows, "steps_per_epoch": steps_per_epoch,
                                  "total_steps": total_steps}
    if rank == 0 and p.zero_shot_baseline and not p.init_model_dir and not state.global_step:
        test_all = test_set.read_all()
        zs = zero_shot_scores(p.base_model_dir, test_all, batch_size=p.eval_batch_size, max_length=p.max_length)
        summary["pretrained_test"] = {"auc": binary_metrics(test_all.label, (zs + 1) / 2)["auc"]}
        log.info("pretrained model before fine-tuning (zero-shot cosine): test AUC %.4f",
                 summary["pretrained_test"]["auc"])  # type: ignore[index]

    sink = _MetricSink(p, rank)
    loss_fn = _loss_fn(p)
    log.info("training: %d rows, %d processes, %d steps/epoch, %d steps, batch %d, %s on %s, trainable=%s%s",
             train.num_rows, world, steps_per_epoch, total_steps, p.batch_size, precision, device, p.trainable,
             " +LoRA" if p.lora else "")

    def evaluate_and_checkpoint() -> bool:
        """Validation AUC, early-stopping bookkeeping, checkpoint; True when training should stop."""
        nonlocal best_state
        stop = torch.zeros(1)
        state.last_eval_step = state.global_step
        if rank == 0:
            metrics, _ = _eval_split(model, tokenizer, valid, p, device, precision)
            state.history.append({"epochs_done": state.epoch, "step": state.global_step, "valid_auc": metrics["auc"],
                                  "valid_log_loss": metrics["log_loss"]})
            sink.log({"valid_auc": metrics["auc"], "valid_log_loss": metrics["log_loss"]}, state.global_step)
            improved = metrics["auc"] > state.best_auc + 1e-6 or math.isnan(state.best_auc)
            if improved:
                state.best_auc = metrics["auc"]
                state.evals_without_improvement = 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                state.evals_without_improvement += 1
            log.info("eval at step %d (epoch %d): valid AUC %.4f, log-loss %.4f%s", state.global_step,
                     state.epoch, metrics["auc"], metrics["log_loss"], " (best)" if improved else "")
            save_checkpoint(ckpt_path, model, optimizer, scheduler, state, best_state)
            if p.early_stopping_patience and state.evals_without_improvement >= p.early_stopping_patience:
                log.info("early stopping: no validation improvement in %d evaluations", p.early_stopping_patience)
                stop[0] = 1
        if world > 1:
            import torch.distributed as dist

            dist.broadcast(stop, src=0)
        return bool(stop[0])

    if state.last_eval_step < 0:
        # Step 0: the starting model (a logistic regression on the numeric features, or the warm start) is a
        # candidate like any later state, so fine-tuning never returns a model worse on validation than it.
        evaluate_and_checkpoint()
    t_start, samples, window_loss, window_n = time.perf_counter(), 0, 0.0, 0
    stop = state.stopped_early
    while not stop and state.epoch < p.epochs and state.global_step < total_steps:
        batches: Iterator[Batch] = train.batches(
            p.batch_size, shuffle=True, seed=p.seed, epoch=state.epoch, rank=rank, world_size=world,
            buffer_rows=p.shuffle_buffer_rows, drop_last=True, group_col=S.USER_ID if ranking else None,
            groups_per_batch=p.users_per_batch)
        for i, batch in enumerate(batches):
            if i < state.step_in_epoch:
                continue  # resuming mid-epoch: the shuffle is seeded, so these are the batches already seen
            with _autocast(device, precision):
                out = _forward(ddp_model, tokenizer, batch, device, p.max_length, return_parts=ranking)
            logits = out.sum(dim=0) if ranking else out
            target = _targets(batch, p).to(device)
            loss = loss_fn(logits.float() if p.loss == "bce" else torch.sigmoid(logits.float()), target)
            if ranking:
                groups = torch.from_numpy(np.unique(batch.extra[S.USER_ID].astype(str), return_inverse=True)[1])
                loss = loss + p.ranking_loss_weight * pairwise_ranking_loss(out[0].float(), target,
                                                                            groups.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), p.max_grad_norm)
            optimizer.step()
            scheduler.step()
            state.global_step += 1
            state.step_in_epoch = i + 1
            samples += len(batch) * world
            window_loss += float(loss.detach())
            window_n += 1
            if state.global_step % p.log_every_steps == 0 or state.global_step == total_steps:
                rate = samples / max(time.perf_counter() - t_start, 1e-9)
                log.info("epoch %d step %d/%d: loss %.4f, %.1f samples/s, lr %.2e", state.epoch,
                         state.global_step, total_steps, window_loss / window_n, rate, scheduler.get_last_lr()[0])
                sink.log({"train_loss": window_loss / window_n, "samples_per_sec": rate}, state.global_step)
                window_loss, window_n = 0.0, 0
            if p.eval_every_steps and state.global_step % p.eval_every_steps == 0:
                stop = evaluate_and_checkpoint()
            if p.halt_after_steps and state.global_step >= p.halt_after_steps:
                log.warning("halting after %d steps as asked; resume from %s", state.global_step, ckpt_path)
                if state.last_eval_step != state.global_step:
                    evaluate_and_checkpoint()
                return summary | {"halted": True, "global_step": state.global_step}
            if stop or state.global_step >= total_steps:
                break
        if state.step_in_epoch >= steps_per_epoch or state.global_step >= total_steps:
            state.epoch += 1
            state.step_in_epoch = 0
        if not stop and state.last_eval_step != state.global_step:
            stop = evaluate_and_checkpoint()  # the checkpoint records the start of the next epoch
    state.stopped_early = stop
    elapsed = time.perf_counter() - t_start
    summary |= {"global_step": state.global_step, "epochs_run": state.epoch, "best_valid_auc": state.best_auc,
                "initial_valid_auc": next((h["valid_auc"] for h in state.history if h["step"] == 0), float("nan")),
                "history": state.history, "stopped_early": stop, "train_seconds": elapsed,
                "samples_per_sec": samples / max(elapsed, 1e-9)}
    if rank != 0:
        return summary
    if best_state is not None:
        model.load_state_dict(best_state)
    model = merge_lora(model)
    model.to("cpu").eval()
    out = Path(p.out_dir)
    model.save(out / "model", tokenizer)
    test_all = test_set.read_all()
    test_metrics, test_scores = _eval_split(model, tokenizer, test_all, p, "cpu", "fp32")
    np.savez(out / "test_predictions.npz", score=test_scores, label=test_all.label,
             user_id=test_all.extra[S.USER_ID].astype(str), ad_id=test_all.extra[S.AD_ID].astype(str))
    summary["test"] = test_metrics
    summary["model_dir"] = str(out / "model")
    log.info("fine-tuned model: test AUC %.4f, log-loss %.4f on %d rows; best valid AUC %.4f (step 0: %.4f)",
             test_metrics["auc"], test_metrics["log_loss"], len(test_all), state.best_auc,
             summary["initial_valid_auc"])
    (out / "summary.json").write_text(json.dumps(summary, default=float))
    return summary
