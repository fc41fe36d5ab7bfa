"""Batch inference with the relevance model: length-sorted micro-batches, dynamic padding, precision and
device choice. Used the same way by the Spark UDFs, the MLflow pyfunc, the trainer's evaluation and the
benchmarks. Never imports Spark."""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adrec_spark.model.relevance import RelevanceModel, load_model, mean_pool

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")


def cpu_bf16_kind() -> str:
    """The CPU's native bf16 matrix support: ``amx`` (AMX tiles), ``avx512bf16`` (AVX512-BF16 alone) or
    ``nobf16`` (bf16 emulated and slow). It decides how far bf16 and int8 outrun fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "nobf16"
    return "amx" if "amx_bf16" in flags else "avx512bf16" if "avx512_bf16" in flags else "nobf16"


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    return cpu_bf16_kind() != "nobf16"


def choose_device(task_gpus: Sequence[str] | None, *, cuda_available: bool | None = None) -> str:
    """``cuda:<addr>`` for the GPU Spark assigned to this task; ``cpu`` (with a warning) when a GPU was
    assigned but CUDA is not usable here; ``cpu`` when no GPU was assigned."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if not task_gpus:
        return "cpu"
    if not cuda_available:
        warnings.warn(f"Spark assigned GPU {list(task_gpus)} to this task but CUDA is not available: "
                      "scoring on CPU", RuntimeWarning, stacklevel=2)
        log.warning("GPU %s assigned but CUDA unavailable: falling back to CPU", list(task_gpus))
        return "cpu"
    return f"cuda:{task_gpus[0]}"


def cpu_default_precision() -> str:
    """bf16 where the CPU has native bf16 (AMX, AVX512-BF16), else int8: faster than fp32 at fp32's ranking."""
    return "bf16" if cpu_supports_bf16() else "int8"


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> bf16 on a GPU, :func:`cpu_default_precision` on CPU. int8 (dynamic quantization) is
    CPU-only."""
    if precision == "auto":
        return "bf16" if device.startswith("cuda") else cpu_default_precision()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "int8" and device.startswith("cuda"):
        log.warning("int8 dynamic quantization runs on CPU only: using bf16 on %s", device)
        return "bf16"
    return precision


def prepare_model(model: RelevanceModel, *, device: str, precision: str) -> RelevanceModel:
    """A copy of ``model`` ready for inference on ``device`` in ``precision`` (eval mode)."""
    m = copy.deepcopy(model).eval()
    if precision == "int8":
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
            m.encoder = quantize_dynamic(m.encoder, {nn.Linear}, dtype=torch.qint8)
        return m
    m = m.to(device)
    if precision == "bf16":
        m = m.to(torch.bfloat16)
    return m


def tokenize_pairs(tokenizer: object, ad_texts: Sequence[str], histories: Sequence[str],
                   max_length: int) -> dict[str, torch.Tensor]:
    """``[CLS] ad [SEP] history [SEP]``, padded to the longest pair in the batch. The history (newest item
    first) is truncated from its end when the pair is too long."""
    return tokenizer(list(ad_texts), list(histories), truncation="longest_first",  # type: ignore[operator]
                     max_length=max_length, padding=True, return_tensors="pt")


def length_sorted_batches(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches in increasing length order: similar lengths share a batch, so padding stays small."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _as_str(values: Sequence[object]) -> list[str]:
    return ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]


class Scorer:
    """Scores (ad, history, numeric) triples with a saved relevance model.

    Args:
        model_dir: a folder written by :meth:`RelevanceModel.save`.
        device: ``cpu`` or ``cuda:N``.
        precision: ``fp32``, ``bf16``, ``int8`` or ``auto``.
        batch_size: pairs per forward pass (micro-batch).
        threads: torch intra-op threads (None: leave torch's default).
    """

    def __init__(self, model_dir: str | Path, *, device: str = "cpu", precision: str = "fp32",
                 batch_size: int = 64, threads: int | None = None, model: RelevanceModel | None = None,
                 tokenizer: object | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        if model is None:
            model, tokenizer = load_model(model_dir)
        self.device = device
        self.precision = resolve_precision(precision, device)
        self.batch_size = batch_size
        self.spec = model.spec
        self.tokenizer = tokenizer
        self.model = prepare_model(model, device=device if self.precision != "int8" else "cpu",
                                   precision=self.precision)
        self._dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.pairs_scored = 0
        self.seconds = 0.0

    @property
    def _run_device(self) -> str:
        return "cpu" if self.precision == "int8" else self.device

    def _numeric(self, numeric: np.ndarray | Sequence[Sequence[float]], n: int) -> np.ndarray:
        arr = np.asarray(numeric, dtype=np.float32).reshape(n, len(self.spec.numeric_features))
        return np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)

    @torch.inference_mode()
    def logit_parts(self, ad_texts: Sequence[object], histories: Sequence[object],
                    numeric: np.ndarray | Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
        """(pair, user) logits per pair; their sum is the click logit, ``pair`` ranks one user's ads
        (see :meth:`RelevanceModel.logit_parts`)."""
        n = len(ad_texts)
        if len(histories) != n:
            raise ValueError(f"{n} ad texts but {len(histories)} histories")
        pair_out, user_out = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.float32)
        if n == 0:
            return pair_out, user_out
        t0 = time.perf_counter()
        ads, hist = _as_str(ad_texts), _as_str(histories)
        num = self._numeric(numeric, n)
        lengths = [len(a) + len(h) for a, h in zip(ads, hist, strict=True)]
        dev = self._run_device
        for idx in length_sorted_batches(lengths, self.batch_size):
            enc = tokenize_pairs(self.tokenizer, [ads[i] for i in idx], [hist[i] for i in idx],
                                 self.spec.max_length)
            enc = {k: v.to(dev) for k, v in enc.items()}
            x = torch.from_numpy(num[idx]).to(dev)
            pair, user = self.model.logit_parts(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                                token_type_ids=enc.get("token_type_ids"), numeric=x)
            pair_out[idx] = pair.float().cpu().numpy()
            user_out[idx] = user.float().cpu().numpy()
        self.pairs_scored += n
        self.seconds += time.perf_counter() - t0
        return pair_out, user_out

    def logits(self, ad_texts: Sequence[object], histories: Sequence[object],
               numeric: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        pair, user = self.logit_parts(ad_texts, histories, numeric)
        return pair + user

    def score(self, ad_texts: Sequence[object], histories: Sequence[object],
              numeric: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """Click probabilities (sigmoid of the logit)."""
        return 1.0 / (1.0 + np.exp(-self.logits(ad_texts, histories, numeric)))

    @torch.inference_mode()
    def embed(self, texts: Sequence[object], *, max_length: int | None = None) -> np.ndarray:
        """L2-normalised mean-pooled embeddings of single texts from the model's encoder."""
        return _embed(self.model.encoder, self.tokenizer, texts, batch_size=self.batch_size,
                      max_length=max_length or self.spec.max_length, device=self._run_device)


@torch.inference_mode()
def _embed(encoder: nn.Module, tokenizer: object, texts: Sequence[object], *, batch_size: int, max_length: int,
           device: str) -> np.ndarray:
    items = _as_str(texts)
    dim = int(encoder.config.hidden_size)
    out = np.zeros((len(items), dim), dtype=np.float32)
    for idx in length_sorted_batches([len(t) for t in items], batch_size):
        enc = tokenizer([items[i] for i in idx], truncation=True, max_length=max_length,  # type: ignore[operator]
                        padding=True, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        hidden = encoder(**enc).last_hidden_state
        pooled = mean_pool(hidden, enc["attention_mask"]).float()
        out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
    return out


class Embedder:
    """Sentence embeddings from a plain pretrained encoder folder (the zero-shot baseline)."""

    def __init__(self, encoder_dir: str | Path, *, batch_size: int = 64, max_length: int = 256,
                 threads: int | None = None) -> None:
        from adrec_spark.model.encoder import load_encoder, load_tokenizer

        if threads:
            torch.set_num_threads(threads)
        self.encoder = load_encoder(encoder_dir).eval()
        self.tokenizer = load_tokenizer(encoder_dir)
        self.batch_size, self.max_length = batch_size, max_length

    def embed(self, texts: Sequence[object]) -> np.ndarray:
        return _embed(self.encoder, self.tokenizer, texts, batch_size=self.batch_size,
                      max_length=self.max_length, device="cpu")


def task_gpu_addresses(resources: Mapping[str, object] | None) -> list[str]:
    """GPU addresses from a Spark ``TaskContext.resources()`` mapping (``{'gpu': ResourceInformation}``)."""
    if not resources or "gpu" not in resources:
        return []
    info = resources["gpu"]
    return [str(a) for a in getattr(info, "addresses", [])]


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
