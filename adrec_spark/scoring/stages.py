"""The scoring job's two model stages, over :mod:`adrec_spark.model_udf` (the model shipped and cached per
worker): the ad index pass (:func:`ad_index_partition`: each ad embedded once, its prior scored once per
affinity level) and the cross-encoder stage (:func:`score_pairs`: pairs assembled from the token ids of
:func:`model_udf.with_token_ids` in a ``mapInArrow`` stage that alone may carry a GPU :class:`ResourceProfile`,
:func:`scoring_profile`).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, FloatType, StructField, StructType

from adrec_spark import schema as S
from adrec_spark.config import ScoreGpuConfig
from adrec_spark.errors import ConfigError
from adrec_spark.frames import require_columns
from adrec_spark.model.inference import sigmoid
from adrec_spark.model_udf import TOKEN_COUNT, TOKENS, UdfSettings, chaos, get_scorer, token_columns

AD_INDEX_FIELDS = [StructField("embedding", ArrayType(FloatType())), StructField("prior", ArrayType(DoubleType()))]


def ad_index_partition(frames: Iterator[pd.DataFrame], *, settings: UdfSettings, numeric_features: list[str],
                       match_feature: str, levels: list[float] | None) -> Iterator[pd.DataFrame]:
    """mapInPandas body for the ad index, two encoder passes per ad (its embedding, its text logit): rows with
    ``ad_text`` and the numeric features for an unknown user -> the other columns as they are, plus ``embedding``
    and ``prior`` (the input schema less those columns, plus :data:`AD_INDEX_FIELDS`). ``prior`` is the click
    probability for an empty history at each ``levels`` value of ``match_feature`` (the user-ad category
    affinity); None when ``levels`` is None (the ``all`` candidates mode needs no prior). The model is loaded
    once per worker, as in the UDFs."""
    scorer = None
    for df in frames:
        if df.empty:
            continue
        scorer = scorer or get_scorer(settings)
        texts = df[S.AD_TEXT].tolist()
        vecs = scorer.embed(texts)
        prior: list[object] = [None] * len(df)
        if levels:
            n, lv = len(df), np.asarray(levels, dtype=np.float32)
            numeric = np.tile(df[numeric_features].to_numpy(dtype=np.float32), (len(lv), 1))
            numeric[:, numeric_features.index(match_feature)] = np.repeat(lv, n)
            # One encoder pass per ad (its text with an empty history); each level moves the numeric part only.
            text = scorer.text_logits_ids(scorer.tokenize(texts), scorer.tokenize([""] * n))
            pair, user = scorer.numeric_logit_parts(numeric)
            probs = sigmoid(np.tile(text, len(lv)) + pair + user)
            prior = list(probs.reshape(len(lv), n).T.astype(np.float64))
        yield df.drop(columns=[S.AD_TEXT, *numeric_features]).assign(embedding=list(vecs), prior=prior)


def text_logit_partition(batches: Iterator[Any], *, settings: UdfSettings, keep: list[str],
                         out_col: str) -> Iterator[Any]:
    """mapInArrow body of the cross-encoder stage: Arrow batches with ``ad_tokens``, ``history_tokens`` (and
    their counts) -> the ``keep`` columns as they are plus ``out_col``, the text part of the pair logit
    (double). Pairs are assembled from the ids; one copy back from the device per Arrow batch."""
    import pyarrow as pa

    from adrec_spark.model.pairs import TokenIds

    scorer = None
    for rb in batches:
        if rb.num_rows == 0:
            continue
        scorer = scorer or get_scorer(settings)
        chaos(settings.chaos)
        col = rb.column
        ads = TokenIds.from_arrow(col(f"ad_{TOKENS}"), col(f"ad_{TOKEN_COUNT}"))
        hist = TokenIds.from_arrow(col(f"history_{TOKENS}"), col(f"history_{TOKEN_COUNT}"))
        logits = scorer.text_logits_ids(ads, hist)
        if settings.progress is not None:
            settings.progress.add(len(logits))
        yield pa.RecordBatch.from_arrays([*(col(c) for c in keep), pa.array(logits.astype(np.float64))],
                                         names=[*keep, out_col])


def text_logits(pairs: DataFrame, settings: UdfSettings, *, out_col: str = S.TEXT_LOGIT,
                profile: Any = None) -> DataFrame:
    """The cross-encoder stage: ``pairs`` (token columns of :func:`with_token_ids` with prefixes ``ad`` and
    ``history``) -> their other columns plus ``out_col``, the text part of each pair's logit. ``profile`` (a
    :func:`scoring_profile`) asks for GPUs for this stage only."""
    inputs = [*token_columns("ad"), *token_columns("history")]
    require_columns(pairs, inputs, "text_logits")
    keep = [c for c in pairs.columns if c not in inputs]
    schema = StructType([*(f for f in pairs.schema.fields if f.name in keep), StructField(out_col, DoubleType())])
    body = partial(text_logit_partition, settings=settings, keep=keep, out_col=out_col)
    return pairs.mapInArrow(body, schema, profile=profile)


def finish_partition(batches: Iterator[Any], *, settings: UdfSettings, numeric_features: list[str], text_col: str,
                     keep: list[str], out_col: str) -> Iterator[Any]:
    """mapInArrow body: Arrow batches with ``text_col`` (the text logit) and the numeric features -> the
    ``keep`` columns plus ``out_col``, the click probability: the sigmoid of the text logit plus the numeric
    parts (the model's small numeric head, no encoder pass)."""
    import pyarrow as pa

    scorer = None
    for rb in batches:
        if rb.num_rows == 0:
            continue
        scorer = scorer or get_scorer(settings)
        col = rb.column
        numeric = np.stack([col(c).to_numpy(zero_copy_only=False) for c in numeric_features], axis=1)
        pair, user = scorer.numeric_logit_parts(numeric.astype(np.float32))
        text = col(text_col).to_numpy(zero_copy_only=False).astype(np.float32)
        probs = sigmoid(text + pair + user)
        yield pa.RecordBatch.from_arrays([*(col(c) for c in keep), pa.array(probs.astype(np.float64))],
                                         names=[*keep, out_col])


def finish_scores(pairs: DataFrame, settings: UdfSettings, *, numeric_features: list[str],
                  text_col: str = S.TEXT_LOGIT, out_col: str = S.SCORE) -> DataFrame:
    """``pairs`` with their text logit (:func:`text_logits`, or carried over from an earlier night) and the
    numeric features -> their other columns (the text logit kept) plus ``out_col``, the click probability."""
    require_columns(pairs, [text_col, *numeric_features], "finish_scores")
    keep = [c for c in pairs.columns if c not in numeric_features]
    schema = StructType([*(f for f in pairs.schema.fields if f.name in keep), StructField(out_col, DoubleType())])
    cast = [F.col(c).cast("float").alias(c) if c in numeric_features else F.col(c) for c in pairs.columns]
    body = partial(finish_partition, settings=settings, numeric_features=numeric_features, text_col=text_col,
                   keep=keep, out_col=out_col)
    return pairs.select(*cast).mapInArrow(body, schema)


def score_pairs(pairs: DataFrame, settings: UdfSettings, *, numeric_features: list[str], out_col: str = S.SCORE,
                profile: Any = None) -> DataFrame:
    """Both stages on every pair: ``pairs`` (token columns and numeric features) -> their other columns plus
    ``out_col`` (click probability). ``profile`` asks for GPUs for the cross-encoder stage only."""
    with_text = text_logits(pairs, settings, out_col="_text_logit", profile=profile)
    return finish_scores(with_text, settings, numeric_features=numeric_features, text_col="_text_logit",
                         out_col=out_col).drop("_text_logit")


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
    if gpu.task_amount is not None and master.startswith("local") and not master.startswith("local-cluster"):
        raise ConfigError(f"config 'score.gpu.task_amount': GPUs per stage need a cluster (standalone, YARN, "
                          f"Kubernetes); master {master!r} cannot schedule them (set it to null)")
