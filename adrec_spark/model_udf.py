"""A registered model, ready for Spark UDFs: the one path scoring and evaluation share.

In the spirit of MLflow's ``spark_udf`` and Spark's ``predict_batch_udf``:

- :func:`prepare_model` resolves the alias once on the driver (pinned for the whole job), downloads the version
  once into the local cache and ships its folder to the executors (``SparkContext.addFile`` in local mode, a
  zip through ``addArchive`` on a cluster: no tracking-server access needed there);
- :data:`WORKER_MODELS` is the one per-worker cache: a model is loaded once per Python worker and kept while
  Spark reuses the worker, one folder per role (the fine-tuned model, the pretrained encoder), so a new model
  version evicts the old one and frees its memory;
- :func:`model_udf` is the one pandas-UDF factory (``output=`` what each row gets), :func:`pretrained_cosine_udf`
  its zero-shot twin over the pretrained encoder.

Each task runs on the GPU Spark assigned to it (``TaskContext.resources()``, mapped to a torch ordinal); without
one, on CPU in the configured precision.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark import SparkContext
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import ArrayType, DataType, FloatType, IntegerType, StructField, StructType

from adrec_spark.config import AppConfig, ChaosConfig
from adrec_spark.frames import require_columns
from adrec_spark.io import fs
from adrec_spark.logs import Stopwatch
from adrec_spark.model.inference import (
    PRECISIONS,
    ModelCache,
    SpecialIds,
    cached_cpu_precision,
    calibrated_cpu_precision,
    model_cache_key,
    sigmoid,
)
from adrec_spark.model.relevance import ModelSpec, load_model
from adrec_spark.registry import registry

log = logging.getLogger(__name__)

WORKER_MODELS = ModelCache()  # (role, folder, ...) -> loaded model; one folder per role in a worker
MODEL, TOKENIZER, PRETRAINED = "model", "tokenizer", "pretrained"  # the cache's roles


@dataclass(frozen=True)
class UdfSettings:
    """What the UDF closure carries to the workers (small and picklable)."""

    model_file: str  # name under SparkFiles, or an absolute local path
    precision: str = "auto"
    batch_size: int = 64
    threads: int | None = 1
    token_budget: int | None = None
    chaos: ChaosConfig = field(default_factory=ChaosConfig)
    # A Spark accumulator (or anything with ``add``) the scoring UDFs add each batch's pair count to; the
    # driver's progress line reads it (adrec_spark.progress). None: nothing counted.
    progress: Any = None


@dataclass(frozen=True)
class PreparedModel:
    """A pinned registry version, its local folder, the settings its UDFs carry to the workers and the numeric
    features the model reads, in its order (from its spec)."""

    model: registry.ResolvedModel
    local_dir: Path
    settings: UdfSettings
    numeric_features: list[str]


def resolve_model(cfg: AppConfig) -> registry.ResolvedModel:
    """``score.model_version`` when set, else ``score.model_alias``: pinned to one version (a clear error for an
    unknown alias or version)."""
    sc = cfg.score
    return registry.resolve(cfg.mlflow, alias=None if sc.model_version else sc.model_alias, version=sc.model_version)


def prepare_model(spark: SparkSession, cfg: AppConfig, model: registry.ResolvedModel | None = None, *,
                  progress: Any = None, chaos: bool = False) -> PreparedModel:
    """``model`` (resolved from the config when None) downloaded once into the local cache and shipped to every
    Python worker, with the UDF settings of ``score``. ``progress``: what the scoring UDFs count scored rows
    into; ``chaos``: carry ``score.chaos`` (the scoring job's fault injection)."""
    model = model or resolve_model(cfg)
    local_dir = registry.ensure_local_model(cfg.mlflow, model, fs.local_cache_dir(cfg.storage.staging, "models"))
    sc = cfg.score
    settings = UdfSettings(model_file=ship_model_dir(spark.sparkContext, local_dir), precision=sc.precision,
                           batch_size=sc.batch_size, threads=sc.torch_threads, token_budget=sc.token_budget,
                           chaos=sc.chaos if chaos else ChaosConfig(), progress=progress)
    settings = replace(settings, precision=job_precision(spark, settings, gpu_stage=sc.gpu.task_amount is not None))
    spec = ModelSpec.from_json((local_dir / "spec.json").read_text())
    return PreparedModel(model, local_dir, settings, list(spec.numeric_features))


def job_precision(spark: SparkSession, settings: UdfSettings, *, gpu_stage: bool) -> str:
    """The one precision every task of the job runs: ``settings.precision`` as given, or for ``auto`` bf16 when
    the scoring stage asks for GPUs, else the calibration of one task (on an executor, whose CPU decides;
    cached per host). Decided here, not in each worker, so one job never mixes precisions."""
    if settings.precision != "auto":
        return settings.precision
    if gpu_stage:
        return "bf16"
    chosen, host = spark.sparkContext.parallelize([0], 1).map(partial(_measured_precision, settings)).collect()[0]
    log.info("precision auto: %s for every task of this job (measured on %s, %s threads)", chosen, host,
             settings.threads or "default")
    return chosen


def _measured_precision(settings: UdfSettings, _: object) -> tuple[str, str]:
    """In a worker: (the calibrated CPU precision of the shipped model, this host); the model is loaded only
    when this host has not measured it yet."""
    import socket

    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    path, threads = _model_path(settings.model_file), torch.get_num_threads()
    chosen = cached_cpu_precision(path, threads=threads)
    if chosen not in PRECISIONS:
        model, tokenizer = load_model(path)
        chosen = calibrated_cpu_precision(model, SpecialIds.of(tokenizer), threads=threads,
                                          cache_key=model_cache_key(path))
    return chosen, socket.gethostname()


def ship_model_dir(sc: SparkContext, model_dir: str | Path) -> str:
    """Make the local folder ``model_dir`` available to every Python worker; returns its ``model_file`` name.

    Spark's ``addFile`` takes local folders only in local mode (a cluster master raises
    UNSUPPORTED_ADD_FILE.LOCAL_DIRECTORY), so on a cluster the folder goes as a zip next to it, which
    ``addArchive`` unpacks on each executor under SparkFiles with the folder's name.
    """
    model_dir = Path(model_dir)
    if sc.master.startswith("local"):
        sc.addFile(str(model_dir), recursive=True)
        return model_dir.name
    archive = model_dir.with_name(model_dir.name + ".zip")
    if not archive.is_file():  # the folder of a model version never changes: zip it once
        tmp = shutil.make_archive(str(model_dir.with_name(f".{model_dir.name}.{os.getpid()}")), "zip",
                                  root_dir=model_dir)
        os.replace(tmp, archive)
    sc.addArchive(f"{archive}#{model_dir.name}")
    log.info("shipping model %s to the executors as %s", model_dir, archive)
    return model_dir.name


def _model_path(model_file: str) -> str:
    if os.path.isabs(model_file) and os.path.isdir(model_file):
        return model_file
    from pyspark import SparkFiles

    return SparkFiles.get(model_file)


def task_device() -> str:
    """The device for this task: its Spark-assigned GPU if CUDA works here, else CPU (warned)."""
    from pyspark import TaskContext

    from adrec_spark.model.inference import choose_device, task_gpu_addresses

    ctx = TaskContext.get()
    gpus = task_gpu_addresses(ctx.resources()) if ctx is not None else []
    return choose_device(gpus)


def _loaded(key: tuple, what: str, load: Callable[[], Any]) -> Any:
    """``WORKER_MODELS``' item for ``key`` (role, folder, ...), loaded (and the load logged) on first use."""

    def timed_load() -> Any:
        watch = Stopwatch()
        item = load()
        log.info("loaded %s %s in pid %d in %.1fs", what, key[1], os.getpid(), watch.elapsed())
        return item

    return WORKER_MODELS.get(key, timed_load)


def get_scorer(s: UdfSettings, device: str | None = None) -> Any:
    """This worker's cached Scorer for the settings (loaded on first use; another model folder evicts it)."""
    from adrec_spark.model.inference import Scorer

    device = device or task_device()
    path = _model_path(s.model_file)
    return _loaded((MODEL, path, device, s.precision, s.threads, s.batch_size, s.token_budget), f"model on {device}",
                   lambda: Scorer(path, device=device, precision=s.precision, batch_size=s.batch_size,
                                  threads=s.threads, token_budget=s.token_budget))


def get_tokenizer(s: UdfSettings) -> tuple[Any, int]:
    """This worker's (tokenizer, max_length) of the model, without loading its weights."""
    path = _model_path(s.model_file)

    def load() -> tuple[Any, int]:
        from adrec_spark.model.encoder import load_tokenizer

        spec = ModelSpec.from_json((Path(path) / "spec.json").read_text())
        return load_tokenizer(Path(path) / "tokenizer"), spec.max_length

    return _loaded((TOKENIZER, path), "tokenizer", load)


@dataclass(frozen=True)
class TextEncoder:
    """How a Python worker loads the pretrained sentence encoder (small and picklable). ``base_model`` as in
    ``model.base_model``; resolved on the worker, where the packaged model is installed."""

    base_model: str
    batch_size: int = 64
    max_length: int = 256
    threads: int | None = 1

    def load(self) -> Any:
        """An object whose ``embed(texts) -> (n, dim)`` returns L2-normalised float32 rows."""
        from adrec_spark.model.encoder import resolve_base_model
        from adrec_spark.model.inference import Embedder

        return Embedder(resolve_base_model(self.base_model), batch_size=self.batch_size,
                        max_length=self.max_length, threads=self.threads)


def text_encoder(cfg: AppConfig) -> TextEncoder:
    """The pretrained encoder (``model.base_model``, never the fine-tuned one, so what it computes means the same
    for every model version), with the scoring batch size and threads."""
    return TextEncoder(cfg.model.base_model, batch_size=cfg.score.batch_size, max_length=cfg.model.max_length,
                       threads=cfg.score.torch_threads)


def worker_encoder(encoder: Any) -> Any:
    """This Python worker's loaded pretrained ``encoder`` (a :class:`TextEncoder`, or anything hashable with
    ``load()``; loaded on first use, another one replaces it)."""
    return _loaded((PRETRAINED, encoder), "text encoder", encoder.load)


def chaos(c: ChaosConfig) -> None:
    """``score.chaos``: fail a task's first attempt or slow each batch, to test retries and progress."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        return
    n = c.fail_first_attempt_every_n_partitions
    if n and ctx.attemptNumber() == 0 and ctx.partitionId() % n == 0:
        raise RuntimeError(f"injected fault: partition {ctx.partitionId()} attempt 0 (score.chaos)")
    if c.sleep_seconds_per_batch:
        time.sleep(c.sleep_seconds_per_batch)


TOKENS, TOKEN_COUNT = "tokens", "token_count"
TOKEN_IDS_TYPE = StructType([StructField(TOKENS, ArrayType(IntegerType())), StructField(TOKEN_COUNT, IntegerType())])
PARTS_TYPE = StructType([StructField("score", FloatType()), StructField("rank_score", FloatType())])


def _score(s: UdfSettings, ad_text: pd.Series, history: pd.Series, numeric: pd.DataFrame) -> pd.Series:
    out = get_scorer(s).score(ad_text.tolist(), history.tolist(), numeric.to_numpy(dtype=np.float32))
    return pd.Series(out.astype(np.float32))


def _parts(s: UdfSettings, ad_text: pd.Series, history: pd.Series, numeric: pd.DataFrame) -> pd.DataFrame:
    pair, user = get_scorer(s).logit_parts(ad_text.tolist(), history.tolist(), numeric.to_numpy(dtype=np.float32))
    prob = sigmoid(pair + user)
    return pd.DataFrame({"score": prob.astype(np.float32), "rank_score": pair.astype(np.float32)})


def _embedding(s: UdfSettings, texts: pd.Series) -> pd.Series:
    return pd.Series(list(get_scorer(s).embed(texts.tolist())))


def _token_ids(s: UdfSettings, texts: pd.Series) -> pd.DataFrame:
    from adrec_spark.model.pairs import tokenize_texts

    tokenizer, max_length = get_tokenizer(s)
    ids = tokenize_texts(tokenizer, texts.tolist(), max_length)
    return pd.DataFrame({TOKENS: np.split(ids.values, ids.offsets[1:-1]) if len(ids) else [],
                         TOKEN_COUNT: ids.counts.astype(np.int32)})


# output -> (return type, the batch function, whether it scores pairs: counted into progress, under score.chaos)
_OUTPUTS: dict[str, tuple[DataType, Callable[..., Any], bool]] = {
    "score": (FloatType(), _score, True),
    "parts": (PARTS_TYPE, _parts, True),
    "embedding": (ArrayType(FloatType()), _embedding, False),
    "token_ids": (TOKEN_IDS_TYPE, _token_ids, False),
}


def model_udf(settings: UdfSettings, *, output: str = "score") -> Any:
    """A pandas UDF running the model of ``settings`` on each worker (loaded once there). ``output``:

    - ``score``: ``(ad_text, history_text, numeric_struct) -> float``, the click probability of each pair;
    - ``parts``: the same inputs ``-> struct<score, rank_score>``, the probability and the pair logit that ranks
      one user's ads (the logit less the user-only bias);
    - ``embedding``: ``(text) -> array<float>``, the L2-normalised sentence embedding of the model's encoder;
    - ``token_ids``: ``(text) -> struct<tokens: array<int>, token_count: int>``, the tokenizer's ids (no special
      tokens; kept up to what a pair can use) and the full token count, without loading the weights.
    """
    if output not in _OUTPUTS:
        raise ValueError(f"model_udf output must be one of {sorted(_OUTPUTS)}, not {output!r}")
    return_type, fn, pairs = _OUTPUTS[output]

    def run(batches: Iterator[tuple]) -> Iterator[Any]:
        for cols in batches:
            if pairs:
                chaos(settings.chaos)
            out = fn(settings, *cols)
            if pairs and settings.progress is not None:
                settings.progress.add(len(out))
            yield out

    if pairs:
        @pandas_udf(return_type)  # type: ignore[call-overload]
        def pair_udf(batches: Iterator[tuple[pd.Series, pd.Series, pd.DataFrame]]) -> Iterator[pd.Series]:
            return run(batches)

        return pair_udf

    @pandas_udf(return_type)  # type: ignore[call-overload]
    def text_udf(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        return run((b,) for b in batches)

    return text_udf


def pretrained_cosine_udf(encoder: TextEncoder) -> Any:
    """``cosine(history_text, ad_text) -> float`` with the pretrained encoder before any fine-tuning (the
    zero-shot baseline), loaded once per worker in :data:`WORKER_MODELS`."""

    @pandas_udf(FloatType())  # type: ignore[call-overload]
    def cosine(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.Series]:
        emb = worker_encoder(encoder)
        for history, ad in batches:
            h, a = emb.embed(history.tolist()), emb.embed(ad.tolist())
            yield pd.Series((h * a).sum(axis=1).astype(np.float32))

    return cosine


def numeric_struct(columns: list[str]) -> Column:
    return F.struct(*[F.col(c).cast("float").alias(c) for c in columns])


def with_token_ids(df: DataFrame, s: UdfSettings, *, text_col: str, prefix: str) -> DataFrame:
    """``df`` plus ``<prefix>_tokens`` (array<int>) and ``<prefix>_token_count`` of ``text_col``: each text
    tokenized once, so a scoring stage only assembles pairs from ids."""
    require_columns(df, (text_col,), "with_token_ids")
    tmp = f"_{prefix}_token_ids"
    return (df.withColumn(tmp, model_udf(s, output="token_ids")(F.col(text_col)))
            .withColumn(f"{prefix}_{TOKENS}", F.col(f"{tmp}.{TOKENS}"))
            .withColumn(f"{prefix}_{TOKEN_COUNT}", F.col(f"{tmp}.{TOKEN_COUNT}")).drop(tmp))


def token_columns(prefix: str) -> list[str]:
    return [f"{prefix}_{TOKENS}", f"{prefix}_{TOKEN_COUNT}"]
