"""pandas UDFs that run the model inside Spark's Python workers.

The model folder reaches executors with ``SparkContext.addFile`` in local mode and as a zip with
``SparkContext.addArchive`` on a cluster (:func:`ship_model_dir`; no tracking server access needed there)
and is loaded once per Python worker: a module-level cache keyed by (path, device, precision) survives
across batches and tasks while Spark reuses the worker. Each task scores on the GPU Spark assigned to it
(``TaskContext.resources()``), in bf16; without one, on CPU in the configured precision.
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
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import ArrayType, DoubleType, FloatType, StructField, StructType

from adrec_spark.config import ChaosConfig

log = logging.getLogger(__name__)

_SCORERS: dict[tuple[str, str, str, int | None, int], Any] = {}


@dataclass(frozen=True)
class UdfSettings:
    """What the UDF closure carries to the workers (small and picklable)."""

    model_file: str  # name under SparkFiles, or an absolute local path
    precision: str = "auto"
    batch_size: int = 64
    threads: int | None = 1
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
    """This worker's cached Scorer for the settings (loaded on first use)."""
    from adrec_spark.model.inference import Scorer

    device = device or task_device()
    path = _model_path(s.model_file)
    key = (path, device, s.precision, s.threads, s.batch_size)
    if key not in _SCORERS:
        t0 = time.perf_counter()
        _SCORERS[key] = Scorer(path, device=device, precision=s.precision, batch_size=s.batch_size,
                               threads=s.threads)
        log.info("loaded model %s on %s (%s) in pid %d in %.1fs", path, device, _SCORERS[key].precision,
                 os.getpid(), time.perf_counter() - t0)
    return _SCORERS[key]


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
