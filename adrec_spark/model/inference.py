"""Batch inference with the relevance model: length-sorted micro-batches, dynamic padding, precision and
device choice. Used the same way by the Spark UDFs, the MLflow pyfunc, the trainer's evaluation and the
benchmarks. Never imports Spark."""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adrec_spark.model.pairs import (
    SpecialIds,
    TokenIds,
    assemble_pairs,
    pair_lengths,
    tokenize_texts,
)
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


def torch_ordinal(address: str, visible_devices: str | None) -> int:
    """The torch CUDA ordinal of the GPU Spark calls ``address``. Spark's discovery script reports physical
    ids; when ``CUDA_VISIBLE_DEVICES`` is set (YARN, containers) CUDA renumbers the visible ones from 0, so
    address ``5`` with ``"3,5"`` visible is ordinal 1. An address not in the visible list: ordinal 0 when
    exactly one GPU is visible (the container already isolated it), with a warning; else an error."""
    if visible_devices is None or not visible_devices.strip():
        try:
            return int(address)
        except ValueError as e:
            raise ValueError(f"Spark GPU address {address!r} is not a device number") from e
    visible = [v.strip() for v in visible_devices.split(",") if v.strip()]
    if address in visible:
        return visible.index(address)
    if len(visible) == 1:
        log.warning("Spark GPU address %s is not in CUDA_VISIBLE_DEVICES=%s; using its only visible GPU (0)",
                    address, visible_devices)
        return 0
    raise ValueError(f"Spark assigned GPU {address!r} but CUDA_VISIBLE_DEVICES={visible_devices!r} does not list "
                     "it: make the discovery script report the same ids that CUDA_VISIBLE_DEVICES uses")


def choose_device(task_gpus: Sequence[str] | None, *, cuda_available: bool | None = None,
                  visible_devices: str | None = None) -> str:
    """``cuda:<ordinal>`` for the GPU Spark assigned to this task (:func:`torch_ordinal`, ``visible_devices``
    defaulting to ``$CUDA_VISIBLE_DEVICES``); ``cpu`` (with a warning) when a GPU was assigned but CUDA is not
    usable here; ``cpu`` when no GPU was assigned."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if not task_gpus:
        return "cpu"
    if not cuda_available:
        warnings.warn(f"Spark assigned GPU {list(task_gpus)} to this task but CUDA is not available: "
                      "scoring on CPU", RuntimeWarning, stacklevel=2)
        log.warning("GPU %s assigned but CUDA unavailable: falling back to CPU", list(task_gpus))
        return "cpu"
    if visible_devices is None:
        visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"cuda:{torch_ordinal(str(task_gpus[0]), visible_devices)}"


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
    _use_sdpa(m.encoder)
    m = m.to(device)
    if precision == "bf16":
        m = m.to(torch.bfloat16)
    return m


def _use_sdpa(encoder: nn.Module) -> None:
    """PyTorch's fused scaled-dot-product attention (transformers 5 picks it for BERT by default; asked for
    here so that a model saved with another setting still gets it)."""
    config = getattr(encoder, "config", None)
    if getattr(config, "_attn_implementation", "sdpa") != "sdpa" and hasattr(encoder, "set_attn_implementation"):
        try:
            encoder.set_attn_implementation("sdpa")
        except (ValueError, ImportError) as e:
            log.info("scaled-dot-product attention unavailable for %s: %s", type(encoder).__name__, e)


def tokenize_pairs(tokenizer: object, ad_texts: Sequence[str], histories: Sequence[str],
                   max_length: int) -> dict[str, torch.Tensor]:
    """``[CLS] ad [SEP] history [SEP]``, padded to the longest pair in the batch, truncated as the tokenizer's
    ``longest_first`` pair encoding does. Each text is tokenized once and the pairs are assembled from the ids
    by :func:`adrec_spark.model.pairs.assemble_pairs`, the same function the scorer uses."""
    arrays = assemble_pairs(tokenize_texts(tokenizer, ad_texts, max_length),
                            tokenize_texts(tokenizer, histories, max_length), SpecialIds.of(tokenizer), max_length)
    return {k: torch.from_numpy(getattr(arrays, k)).long()
            for k in ("input_ids", "token_type_ids", "attention_mask")}


def length_sorted_batches(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches in increasing length order: similar lengths share a batch, so padding stays small."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def token_budget_batches(lengths: Sequence[int] | np.ndarray, token_budget: int,
                         max_pairs: int) -> list[np.ndarray]:
    """Index batches in increasing length order, each as many pairs as fit ``token_budget`` padded tokens
    (pairs x the batch's longest pair; at least one pair) and at most ``max_pairs``: short pairs go in big
    batches, long ones in small, so every forward pass does about the same work."""
    lens = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lens, kind="stable")
    ls = np.maximum(lens[order], 1)
    out, i, n = [], 0, len(order)
    while i < n:
        cap = max(1, min(max_pairs, n - i, token_budget // int(ls[i])))
        fits = np.arange(1, cap + 1) * ls[i:i + cap] <= token_budget
        take = max(1, int(np.count_nonzero(fits)))  # widths only grow, so the fitting counts are a prefix
        out.append(order[i:i + take])
        i += take
    return out


def sigmoid(logit: np.ndarray) -> np.ndarray:
    """Click probabilities of logits."""
    return 1.0 / (1.0 + np.exp(-logit))


def _as_str(values: Sequence[object]) -> list[str]:
    return ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]


class Scorer:
    """Scores (ad, history, numeric) triples with a saved relevance model.

    Texts are tokenized once each (:meth:`logit_parts`) or come as token ids (:meth:`logit_parts_ids`); pairs
    are assembled from the ids in micro-batches of about ``token_budget`` padded tokens (at most
    ``batch_size`` pairs), prepared on a background thread (pinned host memory and non-blocking copies on a
    GPU) while the model runs the previous one; the outputs stay on the device until the whole call is done.

    Args:
        model_dir: a folder written by :meth:`RelevanceModel.save`.
        device: ``cpu`` or ``cuda:N``.
        precision: ``fp32``, ``bf16``, ``int8`` or ``auto`` (bf16 on a GPU; on CPU measured, see
            :func:`calibrated_cpu_precision`).
        batch_size: the most pairs per forward pass (micro-batch).
        threads: torch intra-op threads (None: leave torch's default).
        token_budget: padded tokens per forward pass (None: ``batch_size * 128``).
    """

    def __init__(self, model_dir: str | Path | None, *, device: str = "cpu", precision: str = "fp32",
                 batch_size: int = 64, threads: int | None = None, model: RelevanceModel | None = None,
                 tokenizer: object | None = None, token_budget: int | None = None,
                 precision_cache: str | Path | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        if model is None:
            model, tokenizer = load_model(model_dir)  # type: ignore[arg-type]
        self.device = device
        self.batch_size = batch_size
        self.token_budget = token_budget or batch_size * 128
        self.spec = model.spec
        self.tokenizer = tokenizer
        self.special = SpecialIds.of(tokenizer)
        if precision == "auto" and not device.startswith("cuda"):
            precision = calibrated_cpu_precision(model, self.special, threads=torch.get_num_threads(),
                                                 cache_key=model_cache_key(model_dir), cache_dir=precision_cache)
        self.precision = resolve_precision(precision, device)
        self.model = prepare_model(model, device=device if self.precision != "int8" else "cpu",
                                   precision=self.precision)
        self._pin = self._run_device.startswith("cuda")
        self.pairs_scored = 0
        self.seconds = 0.0

    @property
    def _run_device(self) -> str:
        return "cpu" if self.precision == "int8" else self.device

    def _numeric(self, numeric: np.ndarray | Sequence[Sequence[float]], n: int) -> np.ndarray:
        arr = np.asarray(numeric, dtype=np.float32).reshape(n, len(self.spec.numeric_features))
        return np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)

    def tokenize(self, texts: Sequence[object]) -> TokenIds:
        """Each distinct text's ids (kept up to what a pair can use) and full token count."""
        return tokenize_texts(self.tokenizer, texts, self.spec.max_length)

    def logit_parts(self, ad_texts: Sequence[object], histories: Sequence[object],
                    numeric: np.ndarray | Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
        """(pair, user) logits per pair; their sum is the click logit, ``pair`` ranks one user's ads
        (see :meth:`RelevanceModel.logit_parts`)."""
        if len(histories) != len(ad_texts):
            raise ValueError(f"{len(ad_texts)} ad texts but {len(histories)} histories")
        return self.logit_parts_ids(self.tokenize(ad_texts), self.tokenize(histories), numeric)

    def _prepare(self, ads: TokenIds, hist: TokenIds, num: np.ndarray | None,
                 idx: np.ndarray) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """One micro-batch on the host: the assembled pairs and their numeric rows (None: a text-only pass)."""
        arrays = assemble_pairs(ads, hist, self.special, self.spec.max_length, rows=idx)
        host = {k: torch.from_numpy(getattr(arrays, k)) for k in ("input_ids", "token_type_ids", "attention_mask")}
        x = None if num is None else torch.from_numpy(np.ascontiguousarray(num[idx]))
        if self._pin:
            host = {k: v.pin_memory() for k, v in host.items()}
            x = None if x is None else x.pin_memory()
        return host, x

    def _forward(self, host: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        dev = self._run_device
        enc = {k: v.to(dev, non_blocking=True).long() for k, v in host.items()}
        pair, user = self.model.logit_parts(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                            token_type_ids=enc["token_type_ids"],
                                            numeric=x.to(dev, non_blocking=True))
        return torch.stack([pair.float(), user.float()])

    def _forward_text(self, host: dict[str, torch.Tensor], x: torch.Tensor | None) -> torch.Tensor:
        dev = self._run_device
        enc = {k: v.to(dev, non_blocking=True).long() for k, v in host.items()}
        return self.model.text_logit(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                     token_type_ids=enc["token_type_ids"]).float().unsqueeze(0)

    @torch.inference_mode()
    def _run(self, ads: TokenIds, hist: TokenIds, numeric: np.ndarray | Sequence[Sequence[float]] | None,
             forward: Callable[[dict[str, torch.Tensor], torch.Tensor | None], torch.Tensor]) -> np.ndarray:
        """``forward``'s (k, n) outputs over every pair, in token-budget batches; the next batch assembled on a
        background thread while this one runs; one copy back per call. ``numeric`` None: a text-only pass."""
        n = len(ads)
        if len(hist) != n:
            raise ValueError(f"{n} ads but {len(hist)} histories")
        t0 = time.perf_counter()
        num = None if numeric is None else self._numeric(numeric, n)
        batches = token_budget_batches(pair_lengths(ads, hist, self.spec.max_length), self.token_budget,
                                       self.batch_size)
        outs: list[torch.Tensor] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="adrec-pairs") as pool:
            pending = pool.submit(self._prepare, ads, hist, num, batches[0])
            for b in range(len(batches)):
                host, x = pending.result()
                if b + 1 < len(batches):  # the next batch is assembled while this one runs
                    pending = pool.submit(self._prepare, ads, hist, num, batches[b + 1])
                outs.append(forward(host, x))
        parts = torch.cat(outs, dim=1).cpu().numpy()
        out = np.empty_like(parts)
        out[:, np.concatenate(batches)] = parts
        self.pairs_scored += n
        self.seconds += time.perf_counter() - t0
        return out

    def logit_parts_ids(self, ads: TokenIds, hist: TokenIds,
                        numeric: np.ndarray | Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`logit_parts` from token ids (:meth:`tokenize`, or the Spark token columns)."""
        if len(ads) == 0:
            return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.float32)
        parts = self._run(ads, hist, numeric, self._forward)
        return parts[0], parts[1]

    def text_logits_ids(self, ads: TokenIds, hist: TokenIds) -> np.ndarray:
        """The text part of each pair's logit (:meth:`RelevanceModel.text_logit`): the encoder pass alone."""
        if len(ads) == 0:
            return np.empty(0, dtype=np.float32)
        return self._run(ads, hist, None, self._forward_text)[0]

    @torch.inference_mode()
    def numeric_logit_parts(self, numeric: np.ndarray | Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
        """(pair, user) parts of each pair's logit from its numeric features alone (no encoder pass): with
        :meth:`text_logits_ids` they add up to :meth:`logit_parts_ids`."""
        n = len(numeric)
        if n == 0:
            return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.float32)
        x = torch.from_numpy(self._numeric(numeric, n)).to(self._run_device)
        pair, user = self.model.numeric_logit_parts(x)
        return pair.float().cpu().numpy(), user.float().cpu().numpy()

    def logits(self, ad_texts: Sequence[object], histories: Sequence[object],
               numeric: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        pair, user = self.logit_parts(ad_texts, histories, numeric)
        return pair + user

    def score(self, ad_texts: Sequence[object], histories: Sequence[object],
              numeric: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """Click probabilities (sigmoid of the logit)."""
        return sigmoid(self.logits(ad_texts, histories, numeric))

    @torch.inference_mode()
    def embed(self, texts: Sequence[object], *, max_length: int | None = None) -> np.ndarray:
        """L2-normalised mean-pooled embeddings of single texts from the model's encoder."""
        return _embed(self.model.encoder, self.tokenizer, texts, batch_size=self.batch_size,
                      max_length=max_length or self.spec.max_length, device=self._run_device)


CALIBRATION_MIN_CORRELATION = 0.999
_CALIBRATED: dict[tuple[str, int], str] = {}


@dataclass(frozen=True)
class PrecisionTrial:
    precision: str
    pairs_per_second: float
    correlation: float  # of its logits with fp32's on the calibration batch


def fastest_faithful_precision(runners: Mapping[str, Callable[[], np.ndarray]], *, pairs: int, rounds: int = 2,
                               clock: Callable[[], float] = time.perf_counter,
                               min_correlation: float = CALIBRATION_MIN_CORRELATION,
                               ) -> tuple[str, list[PrecisionTrial]]:
    """Times each runner (a call scoring the same ``pairs`` calibration pairs in one precision; ``fp32``
    required, the reference) after one warm-up call, best of ``rounds``, and returns the fastest precision
    whose logits correlate with fp32's at >= ``min_correlation`` (Pearson), with every trial."""
    if "fp32" not in runners:
        raise ValueError("the precision calibration needs fp32 as its reference")
    trials, reference = [], None
    for precision, run in runners.items():
        logits = np.asarray(run(), dtype=np.float64)  # warm-up, and the scores compared with fp32
        best = float("inf")
        for _ in range(max(1, rounds)):
            t0 = clock()
            run()
            best = min(best, clock() - t0)
        if precision == "fp32":
            reference = logits
        trials.append((precision, pairs / max(best, 1e-9), logits))
    out = [PrecisionTrial(p, rate, 1.0 if p == "fp32" else _correlation(reference, logits))
           for p, rate, logits in trials]
    faithful = [t for t in out if t.correlation >= min_correlation]
    return max(faithful, key=lambda t: t.pairs_per_second).precision, out


def _correlation(reference: np.ndarray | None, b: np.ndarray) -> float:
    """Pearson correlation; NaN (never faithful) for non-finite scores, and for constant scores 1 when they
    equal the reference, else 0."""
    if reference is None or not np.all(np.isfinite(b)):
        return float("nan")
    if np.std(reference) == 0 or np.std(b) == 0:
        return float(np.allclose(reference, b))
    return float(np.corrcoef(reference, b)[0, 1])


def calibration_pairs(vocab_size: int, special: SpecialIds, *, n: int = 32, tokens: int = 120,
                      seed: int = 0) -> tuple[TokenIds, TokenIds]:
    """``n`` pairs of random word ids, ``tokens`` long in all (the size of a nightly run's pairs)."""
    rng = np.random.default_rng(seed)
    low = max(special.cls, special.sep, special.pad) + 1
    ad_len = rng.integers(10, 40, n)
    ads = [rng.integers(low, vocab_size, k) for k in ad_len]
    hist = [rng.integers(low, vocab_size, max(1, tokens - 3 - k)) for k in ad_len]
    return TokenIds.from_lists(ads), TokenIds.from_lists(hist)


def model_cache_key(model_dir: str | Path | None) -> str:
    """A saved model's identity by content (its spec, head weights and encoder config), so that the same
    model shipped to another folder (each run's SparkFiles) finds its calibration; "" for no folder."""
    import hashlib

    if model_dir is None or not Path(model_dir).is_dir():
        return ""
    d = Path(model_dir)
    h = hashlib.sha256()
    for part in ("spec.json", "head.pt", "encoder/config.json"):
        if (d / part).is_file():
            h.update((d / part).read_bytes())
    return h.hexdigest()[:24]


def cached_cpu_precision(model_dir: str | Path, *, threads: int, cache_dir: str | Path | None = None) -> str | None:
    """The precision ``auto`` chose for this model, host and thread count, if it was measured here."""
    import json

    file = _precision_cache_file(cache_dir, f"{model_cache_key(model_dir)}|{threads}")
    try:
        return str(json.loads(file.read_text())["precision"])
    except (OSError, ValueError, KeyError):
        return None


def _precision_cache_file(cache_dir: str | Path | None, key: str) -> Path:
    import hashlib
    import socket
    import tempfile

    base = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "adrec-precision"
    digest = hashlib.sha256(f"{key}|{socket.gethostname()}|{torch.__version__}".encode()).hexdigest()[:16]
    return base / f"{digest}.json"


def calibrated_cpu_precision(model: RelevanceModel, special: SpecialIds, *, threads: int, cache_key: str = "",
                             cache_dir: str | Path | None = None, candidates: Sequence[str] = PRECISIONS,
                             clock: Callable[[], float] = time.perf_counter) -> str:
    """``auto`` on CPU: the fastest of ``candidates`` on this machine whose scores track fp32, measured on a
    calibration batch once per worker and cached per host in a small JSON file keyed by the model
    (``cache_key``: its folder), host, torch version and ``threads``. The choice and the rates are logged."""
    import json

    key = f"{cache_key}|{threads}"
    if cache_key and (key, threads) in _CALIBRATED:
        return _CALIBRATED[(key, threads)]
    file = _precision_cache_file(cache_dir, key)
    if cache_key and file.is_file():
        try:
            chosen = json.loads(file.read_text())["precision"]
            if chosen in candidates:
                _CALIBRATED[(key, threads)] = chosen
                return chosen
        except (OSError, ValueError, KeyError):
            log.warning("ignoring an unreadable precision calibration cache %s", file)
    ads, hist = calibration_pairs(int(model.encoder.config.vocab_size), special)
    num = np.random.default_rng(1).normal(size=(len(ads), len(model.spec.numeric_features))).astype(np.float32)
    runners = {}
    for p in dict.fromkeys(("fp32", *candidates)):
        scorer = Scorer(None, model=model, tokenizer=_Special(special), precision=p, batch_size=len(ads))
        runners[p] = lambda s=scorer: np.add(*s.logit_parts_ids(ads, hist, num))
    chosen, trials = fastest_faithful_precision(runners, pairs=len(ads), clock=clock)
    log.info("precision auto on CPU (%d threads): %s; calibration %s", threads, chosen,
             ", ".join(f"{t.precision} {t.pairs_per_second:.0f} pairs/s r={t.correlation:.4f}" for t in trials))
    if cache_key:
        _CALIBRATED[(key, threads)] = chosen
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"precision": chosen, "threads": threads, "model": cache_key,
                                       "trials": [t.__dict__ for t in trials]}))
            os.replace(tmp, file)
        except OSError as e:
            log.warning("could not cache the precision calibration in %s: %s", file, e)
    return chosen


@dataclass(frozen=True)
class _Special:
    """Stands in for a tokenizer where only the special ids are needed (scoring from ids)."""

    special: SpecialIds

    @property
    def cls_token_id(self) -> int:
        return self.special.cls

    @property
    def sep_token_id(self) -> int:
        return self.special.sep

    @property
    def pad_token_id(self) -> int:
        return self.special.pad


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
                 threads: int | None = None, device: str = "cpu") -> None:
        from adrec_spark.model.encoder import load_encoder, load_tokenizer

        if threads:
            torch.set_num_threads(threads)
        self.device = device
        self.encoder = load_encoder(encoder_dir).eval().to(device)  # fp32 on every device, as the baseline
        self.tokenizer = load_tokenizer(encoder_dir)
        self.batch_size, self.max_length = batch_size, max_length

    def embed(self, texts: Sequence[object]) -> np.ndarray:
        return _embed(self.encoder, self.tokenizer, texts, batch_size=self.batch_size,
                      max_length=self.max_length, device=self.device)


def task_gpu_addresses(resources: Mapping[str, object] | None) -> list[str]:
    """GPU addresses from a Spark ``TaskContext.resources()`` mapping (``{'gpu': ResourceInformation}``)."""
    if not resources or "gpu" not in resources:
        return []
    info = resources["gpu"]
    return [str(a) for a in getattr(info, "addresses", [])]


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class ModelCache:
    """A Python worker's loaded models, bounded to one model folder (one model version) per role: loading
    another folder for a role evicts that role's others first and frees their memory (GPU memory too), so a
    long-lived worker that scores version 2 after version 1 does not hold both. Keys are ``(role, folder,
    ...)``; the rest of the key tells apart loads of one folder (device, precision)."""

    def __init__(self) -> None:
        self._items: dict[tuple, object] = {}

    def __len__(self) -> int:
        return len(self._items)

    def folders(self) -> list[str]:
        """The model folders held (at most one per role)."""
        return list(dict.fromkeys(str(k[1]) for k in self._items))

    def get(self, key: tuple, load: Callable[[], object]) -> object:
        """The item for ``key`` (role, folder, ...), loaded by ``load`` when missing."""
        if key in self._items:
            return self._items[key]
        stale = [k for k in self._items if k[0] == key[0] and k[1] != key[1]]
        if stale:
            self.evict(stale)
        self._items[key] = load()
        return self._items[key]

    def evict(self, keys: Sequence[tuple] | None = None) -> None:
        import gc

        gone = list(self._items) if keys is None else list(keys)
        for k in gone:
            del self._items[k]
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        log.info("evicted %d cached model(s) from pid %d: %s", len(gone), os.getpid(), [k[1] for k in gone])
