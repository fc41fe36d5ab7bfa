"""pandas UDFs that run the model inside Spark's Python workers.

The model folder reaches executors with ``SparkContext.addFile`` in local mode and as a zip with
``SparkContext.addArchive`` on a cluster (:func:`ship_model_dir`; no tracking server access needed there)
and is loaded once per Python worker: a module-level cache keyed by (path, device, precision) survives
across batches and tasks while Spark reuses the worker, and holds one model version at a time. Each task
scores on the GPU Spark assigned to it (``TaskContext.resources()``, mapped to a torch ordinal), in bf16;
without one, on CPU in the configured precision.

Texts are tokenized once each (:func:`token_ids_udf`, on the users' and the ads' rows) and travel to the
scoring stage as ``list<int32>`` columns; :func:`score_pairs` assembles the pairs from those ids in a
``mapInArrow`` stage that alone may carry a GPU :class:`ResourceProfile` (:func:`scoring_profile`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark import SparkContext
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import ArrayType, DoubleType, FloatType, IntegerType, StructField, StructType

from adrec_spark.config import ChaosConfig, ScoreGpuConfig
from adrec_spark.model.inference import ModelCache

log = logging.getLogger(__name__)

_SCORERS = ModelCache()  # one model version per worker: a new one evicts the old and frees its memory
_TOKENIZERS = ModelCache()


@dataclass(frozen=True)
class UdfSettings:
    """What the UDF closure carries to the workers (small and picklable)."""

    model_file: str  # name under SparkFiles, or an absolute local path
    precision: str = "auto"
    batch_size: int = 64
    threads: int | None = 1
    token_budget: int | None = None
    chaos: ChaosConfig = field(default_factory=ChaosConfig)
    # A Spark accumulator (or anything with ``add``) the scoring UDF adds each batch's pair count to; the
    # driver's progress line reads it (adrec_spark.progress). None: nothing counted.
    progress: Any = None


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


def get_scorer(s: UdfSettings, device: str | None = None) -> Any:
    """This worker's cached Scorer for the settings (loaded on first use; another model folder evicts it)."""
    from adrec_spark.model.inference import Scorer

    device = device or task_device()
    path = _model_path(s.model_file)
    key = (path, device, s.precision, s.threads, s.batch_size, s.token_budget)

    def load() -> Any:
        t0 = time.perf_counter()
        scorer = Scorer(path, device=device, precision=s.precision, batch_size=s.batch_size, threads=s.threads,
                        token_budget=s.token_budget)
        log.info("loaded model %s on %s (%s) in pid %d in %.1fs", path, device, scorer.precision, os.getpid(),
                 time.perf_counter() - t0)
        return scorer

    return _SCORERS.get(key, load)


def get_tokenizer(s: UdfSettings) -> tuple[Any, int]:
    """This worker's (tokenizer, max_length) of the model, without loading its weights."""
    path = _model_path(s.model_file)

    def load() -> tuple[Any, int]:
        from adrec_spark.model.encoder import load_tokenizer
        from adrec_spark.model.relevance import ModelSpec

        spec = ModelSpec.from_json((Path(path) / "spec.json").read_text())
        return load_tokenizer(Path(path) / "tokenizer"), spec.max_length

    return _TOKENIZERS.get((path,), load)  # type: ignore[return-value]


def _chaos(c: ChaosConfig) -> None:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        return
    n = c.fail_first_attempt_every_n_partitions
    if n and ctx.attemptNumber() == 0 and ctx.partitionId() % n == 0:
        raise RuntimeError(f"injected fault: partition {ctx.partitionId()} attempt 0 (score.chaos)")
    if c.sleep_seconds_per_batch:
        time.sleep(c.sleep_seconds_per_batch)


def score_udf(s: UdfSettings) -> Any:
    """``score(ad_text, history_text, numeric_struct) -> float``: click probability per pair."""

    @pandas_udf(FloatType())  # type: ignore[call-overload]
    def score(batches: Iterator[tuple[pd.Series, pd.Series, pd.DataFrame]]) -> Iterator[pd.Series]:
        scorer = get_scorer(s)
        for ad_text, history, numeric in batches:
            _chaos(s.chaos)
            out = scorer.score(ad_text.tolist(), history.tolist(), numeric.to_numpy(dtype=np.float32))
            if s.progress is not None:
                s.progress.add(len(out))
            yield pd.Series(out.astype(np.float32))

    return score


def score_parts_udf(s: UdfSettings) -> Any:
    """``score_parts(ad_text, history_text, numeric_struct) -> struct<score, rank_score>``: the click
    probability and the pair logit that ranks one user's ads (the logit less the user-only bias)."""

    @pandas_udf(StructType([StructField("score", FloatType()), StructField("rank_score", FloatType())]))  # type: ignore[call-overload]
    def score_parts(batches: Iterator[tuple[pd.Series, pd.Series, pd.DataFrame]]) -> Iterator[pd.DataFrame]:
        scorer = get_scorer(s)
        for ad_text, history, numeric in batches:
            _chaos(s.chaos)
            pair, user = scorer.logit_parts(ad_text.tolist(), history.tolist(), numeric.to_numpy(dtype=np.float32))
            prob = 1.0 / (1.0 + np.exp(-(pair + user)))
            if s.progress is not None:
                s.progress.add(len(prob))
            yield pd.DataFrame({"score": prob.astype(np.float32), "rank_score": pair.astype(np.float32)})

    return score_parts


def embed_udf(s: UdfSettings) -> Any:
    """``embed(text) -> array<float>``: L2-normalised sentence embedding from the model's encoder."""

    @pandas_udf(ArrayType(FloatType()))  # type: ignore[call-overload]
    def embed(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        scorer = get_scorer(s)
        for texts in batches:
            vecs = scorer.embed(texts.tolist())
            yield pd.Series(list(vecs))

    return embed


AD_INDEX_FIELDS = [StructField("embedding", ArrayType(FloatType())), StructField("prior", ArrayType(DoubleType()))]


def ad_index_partition(frames: Iterator[pd.DataFrame], *, settings: UdfSettings, numeric_features: list[str],
                       match_feature: str, levels: list[float] | None) -> Iterator[pd.DataFrame]:
    """mapInPandas body for the ad index, one pass per ad: rows with ``ad_text`` and the numeric features for
    an unknown user -> the other columns as they are, plus ``embedding`` and ``prior`` (the input schema less
    those columns, plus :data:`AD_INDEX_FIELDS`). ``prior`` is the click probability for an empty history at
    each ``levels`` value of ``match_feature`` (the user-ad category affinity); None when ``levels`` is None
    (the ``all`` candidates mode needs no prior). The model is loaded once per worker, as in the UDFs."""
    scorer = None
    for df in frames:
        if df.empty:
            continue
        scorer = scorer or get_scorer(settings)
        texts = df["ad_text"].tolist()
        vecs = scorer.embed(texts)
        prior: list[object] = [None] * len(df)
        if levels:
            n, lv = len(df), np.asarray(levels, dtype=np.float32)
            numeric = np.tile(df[numeric_features].to_numpy(dtype=np.float32), (len(lv), 1))
            numeric[:, numeric_features.index(match_feature)] = np.repeat(lv, n)
            probs = scorer.score(texts * len(lv), [""] * (n * len(lv)), numeric).reshape(len(lv), n)
            prior = list(probs.T.astype(np.float64))
        yield df.drop(columns=["ad_text", *numeric_features]).assign(embedding=list(vecs), prior=prior)


_EMBEDDERS: dict[tuple[str, int | None], Any] = {}


def pretrained_cosine_udf(base_model: str, *, batch_size: int = 64, max_length: int = 256,
                          threads: int | None = 1) -> Any:
    """``cosine(history_text, ad_text) -> float`` with the pretrained encoder before any fine-tuning (the
    zero-shot baseline). ``base_model`` is resolved on the worker (the packaged model is installed there)."""

    @pandas_udf(FloatType())  # type: ignore[call-overload]
    def cosine(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.Series]:
        from adrec_spark.model.encoder import resolve_base_model
        from adrec_spark.model.inference import Embedder

        key = (base_model, threads)
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = Embedder(resolve_base_model(base_model), batch_size=batch_size,
                                       max_length=max_length, threads=threads)
        emb = _EMBEDDERS[key]
        for history, ad in batches:
            h, a = emb.embed(history.tolist()), emb.embed(ad.tolist())
            yield pd.Series((h * a).sum(axis=1).astype(np.float32))

    return cosine


def numeric_struct(columns: list[str]) -> Column:
    return F.struct(*[F.col(c).cast("float").alias(c) for c in columns])


TOKENS, TOKEN_COUNT = "tokens", "token_count"
TOKEN_IDS_TYPE = StructType([StructField(TOKENS, ArrayType(IntegerType())), StructField(TOKEN_COUNT, IntegerType())])


def token_ids_udf(s: UdfSettings) -> Any:
    """``token_ids(text) -> struct<tokens: array<int>, token_count: int>``: the model tokenizer's ids of each
    text (no special tokens; kept up to what a pair can use) and its full token count. Applied once per user
    and once per ad, so the scoring stage only assembles pairs from ids."""

    @pandas_udf(TOKEN_IDS_TYPE)  # type: ignore[call-overload]
    def token_ids(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        from adrec_spark.model.pairs import tokenize_texts

        tokenizer, max_length = get_tokenizer(s)
        for texts in batches:
            ids = tokenize_texts(tokenizer, texts.tolist(), max_length)
            yield pd.DataFrame({TOKENS: np.split(ids.values, ids.offsets[1:-1]) if len(ids) else [],
                                TOKEN_COUNT: ids.counts.astype(np.int32)})

    return token_ids


def with_token_ids(df: DataFrame, s: UdfSettings, *, text_col: str, prefix: str) -> DataFrame:
    """``df`` plus ``<prefix>_tokens`` (array<int>) and ``<prefix>_token_count`` of ``text_col``."""
    from adrec_spark.frames import require_columns

    require_columns(df, (text_col,), "with_token_ids")
    tmp = f"_{prefix}_token_ids"
    return (df.withColumn(tmp, token_ids_udf(s)(F.col(text_col)))
            .withColumn(f"{prefix}_{TOKENS}", F.col(f"{tmp}.{TOKENS}"))
            .withColumn(f"{prefix}_{TOKEN_COUNT}", F.col(f"{tmp}.{TOKEN_COUNT}")).drop(tmp))


def token_columns(prefix: str) -> list[str]:
    return [f"{prefix}_{TOKENS}", f"{prefix}_{TOKEN_COUNT}"]


def score_partition(batches: Iterator[Any], *, settings: UdfSettings, numeric_features: list[str],
                    keep: list[str], out_col: str) -> Iterator[Any]:
    """mapInArrow body of the scoring stage: Arrow batches with ``ad_tokens``, ``history_tokens`` (and their
    counts) and the numeric features -> the ``keep`` columns as they are plus ``out_col`` (click probability,
    double). Pairs are assembled from the ids; one copy back from the device per Arrow batch."""
    import pyarrow as pa

    from adrec_spark.model.pairs import TokenIds

    scorer = None
    for rb in batches:
        if rb.num_rows == 0:
            continue
        scorer = scorer or get_scorer(settings)
        _chaos(settings.chaos)
        col = rb.column
        ads = TokenIds.from_arrow(col(f"ad_{TOKENS}"), col(f"ad_{TOKEN_COUNT}"))
        hist = TokenIds.from_arrow(col(f"history_{TOKENS}"), col(f"history_{TOKEN_COUNT}"))
        numeric = np.stack([col(c).to_numpy(zero_copy_only=False) for c in numeric_features], axis=1)
        probs = scorer.score_ids(ads, hist, numeric.astype(np.float32))
        if settings.progress is not None:
            settings.progress.add(len(probs))
        yield pa.RecordBatch.from_arrays([*(col(c) for c in keep), pa.array(probs.astype(np.float64))],
                                         names=[*keep, out_col])


def score_pairs(pairs: DataFrame, settings: UdfSettings, *, numeric_features: list[str], out_col: str = "score",
                profile: Any = None) -> DataFrame:
    """The cross-encoder stage: ``pairs`` (token columns of :func:`with_token_ids` with prefixes ``ad`` and
    ``history``, and the numeric features) -> their other columns plus ``out_col``. ``profile`` (a
    :func:`scoring_profile`) asks for GPUs for this stage only."""
    from functools import partial

    from adrec_spark.frames import require_columns

    inputs = [*token_columns("ad"), *token_columns("history"), *numeric_features]
    require_columns(pairs, inputs, "score_pairs")
    keep = [c for c in pairs.columns if c not in inputs]
    schema = StructType([*(f for f in pairs.schema.fields if f.name in keep), StructField(out_col, DoubleType())])
    cast = [F.col(c).cast("float").alias(c) if c in numeric_features else F.col(c) for c in pairs.columns]
    body = partial(score_partition, settings=settings, numeric_features=numeric_features, keep=keep,
                   out_col=out_col)
    return pairs.select(*cast).mapInArrow(body, schema, profile=profile)


def scoring_profile(gpu: ScoreGpuConfig) -> Any:
    """The stage-level ResourceProfile of the scoring stage (None without ``task_amount``): each task asks for
    ``task_amount`` of a GPU and ``task_cpus`` cores; with ``executor_amount``, executors with that many GPUs
    (and ``executor_cores`` cores) found by ``discovery_script``."""
    if gpu.task_amount is None:
        return None
    from pyspark.resource import ExecutorResourceRequests, ResourceProfileBuilder, TaskResourceRequests

    builder = ResourceProfileBuilder().require(
        TaskResourceRequests().cpus(gpu.task_cpus).resource("gpu", float(gpu.task_amount)))
    if gpu.executor_amount is not None:
        ereq = ExecutorResourceRequests().resource("gpu", gpu.executor_amount,
                                                   discoveryScript=gpu.discovery_script or "")
        if gpu.executor_cores:
            ereq = ereq.cores(gpu.executor_cores)
        builder = builder.require(ereq)
    return builder.build


def check_profile_supported(master: str, gpu: ScoreGpuConfig) -> None:
    """A GPU profile needs a cluster: Spark's local mode cannot schedule resources per stage."""
    from adrec_spark.errors import ConfigError

    if gpu.task_amount is not None and master.startswith("local") and not master.startswith("local-cluster"):
        raise ConfigError(f"config 'score.gpu.task_amount': GPUs per stage need a cluster (standalone, YARN, "
                          f"Kubernetes); master {master!r} cannot schedule them (set it to null)")
