"""Text-similarity features: the cheap text signal a team tries before fine-tuning a cross-encoder.

For each row (a user's impression of an ad, or a candidate pair) and each kind of history text (the clicked
or bought ads' texts, the searches, the reviews: ``schema.HISTORY_ITEM_TEXTS``, the same history window the
history text comes from, so point in time), the cosine between the ad text and each such text under the
pretrained encoder, reduced to max and mean, and the number of texts (``schema.TEXT_SIMILARITY_FEATURES``).
A row without texts of a kind gets 0 for that kind: no evidence, not a similarity.

Each distinct text is embedded once, not once per pair: :func:`collect_text_vectors` gathers the distinct texts
of every frame it is given, embeds them spread over the executors' cores (the encoder loaded once per Python
worker, as the scoring UDFs do) and broadcasts the vectors; :func:`with_text_similarity` then only looks the
texts up and takes dot products (:func:`adrec_spark.model.similarity.cosine_aggregates`). The vectors live on
the driver and every executor: 1.5 KB per distinct text with all-MiniLM-L6-v2 (384 floats).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial, reduce
from typing import Any

import numpy as np
import pandas as pd
from pyspark import Broadcast
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, FloatType, StringType, StructField, StructType

from adrec_spark import schema as S
from adrec_spark.errors import InputDataError
from adrec_spark.frames import require_columns
from adrec_spark.logs import Stopwatch
from adrec_spark.model_udf import worker_encoder

log = logging.getLogger(__name__)

TEXT, EMBEDDING = "text", "embedding"
_KINDS = ((S.HISTORY_CLICK_TEXTS, "click"), (S.HISTORY_SEARCH_TEXTS, "search"), (S.HISTORY_REVIEW_TEXTS, "review"))


def uses_text_similarity(numeric_features: Sequence[str]) -> bool:
    """Whether a model reading ``numeric_features`` needs the text-similarity features."""
    return any(c in S.TEXT_SIMILARITY_FEATURES for c in numeric_features)


def require_history_texts(df: DataFrame, what: str) -> None:
    """A clear error when ``df`` (training_examples or user_profiles) predates the history texts by kind."""
    missing = [c for c in S.HISTORY_ITEM_TEXTS if c not in df.columns]
    if missing:
        raise InputDataError(
            f"{what} has no {', '.join(missing)} (written by the ETL of an earlier release), which the "
            "text-similarity features need: rerun the ETL for its dates to add them")


@dataclass(frozen=True)
class TextVectors:
    """Every distinct text's embedding: ``vectors[i]`` is the L2-normalised embedding of ``texts[i]``."""

    texts: list[str]
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


def distinct_texts(df: DataFrame) -> DataFrame:
    """The distinct non-empty texts of ``df``'s ad texts and history texts of every kind, as column ``text``."""
    require_columns(df, (S.AD_TEXT, *S.HISTORY_ITEM_TEXTS), "distinct_texts")
    ads = df.select(F.col(S.AD_TEXT).alias(TEXT))
    items = df.select(F.explode(F.concat(*[F.coalesce(c, F.array().cast("array<string>"))
                                           for c in S.HISTORY_ITEM_TEXTS])).alias(TEXT))
    return ads.unionByName(items).where(F.length(TEXT) > 0).distinct()


def embed_partition(frames: Iterator[pd.DataFrame], *, encoder: Any) -> Iterator[pd.DataFrame]:
    """mapInPandas body: rows of ``text`` -> ``text`` and its ``embedding``; the encoder loaded once per worker."""
    model = None
    for df in frames:
        if df.empty:
            continue
        model = model or worker_encoder(encoder)
        vecs = np.asarray(model.embed(df[TEXT].tolist()), dtype=np.float32)
        yield pd.DataFrame({TEXT: df[TEXT].to_numpy(), EMBEDDING: list(vecs)})


def embed_texts(texts: DataFrame, encoder: Any, *, partitions: int) -> DataFrame:
    """``texts`` (column ``text``, each text once) with its ``embedding``, spread over ``partitions`` tasks."""
    require_columns(texts, (TEXT,), "embed_texts")
    schema = StructType([StructField(TEXT, StringType()), StructField(EMBEDDING, ArrayType(FloatType()))])
    return texts.select(TEXT).repartition(partitions, TEXT).mapInPandas(partial(embed_partition, encoder=encoder),
                                                                         schema)


def collect_text_vectors(frames: Sequence[DataFrame], encoder: Any) -> Broadcast:
    """Embed every distinct text of ``frames`` once (one Spark job) and broadcast the vectors: the input of
    :func:`with_text_similarity` for all of these frames."""
    if not frames:
        raise ValueError("collect_text_vectors: no frames given")
    spark = frames[0].sparkSession
    texts = reduce(DataFrame.unionByName, [distinct_texts(f) for f in frames]).distinct()
    watch = Stopwatch()
    got = embed_texts(texts, encoder, partitions=spark.sparkContext.defaultParallelism).toPandas()
    dim = len(got[EMBEDDING].iloc[0]) if len(got) else 0
    vectors = np.stack(got[EMBEDDING].to_numpy()).astype(np.float32) if len(got) else np.zeros((0, 0), np.float32)
    log.info("text similarity: %d distinct texts embedded once each (dim %d, %.1f MB) in %.1fs", len(got), dim,
             vectors.nbytes / 1e6, watch.elapsed())
    return spark.sparkContext.broadcast(TextVectors(got[TEXT].tolist(), vectors))


def similarity_columns(batch: Any, vectors: TextVectors, lookup: pd.Index) -> dict[str, np.ndarray]:
    """``schema.TEXT_SIMILARITY_FEATURES`` of one Arrow record batch with ``ad_text`` and the history texts."""
    import pyarrow.compute as pc

    from adrec_spark.model.similarity import cosine_aggregates

    n = batch.num_rows
    ad = lookup.get_indexer(batch.column(S.AD_TEXT).to_pandas())
    out: dict[str, np.ndarray] = {}
    for column, kind in _KINDS:
        lists = batch.column(column)
        lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
        items = lookup.get_indexer(pc.list_flatten(lists).to_pandas()) if lengths.sum() else np.empty(0, np.int64)
        top, mean, count = cosine_aggregates(vectors.vectors, ad, items, np.repeat(np.arange(n), lengths))
        out[f"{kind}_cos_max"], out[f"{kind}_cos_mean"], out[f"{kind}_texts"] = top, mean, count
    return out


def similarity_partition(batches: Iterator[Any], *, vectors: Broadcast) -> Iterator[Any]:
    """mapInArrow body of :func:`with_text_similarity`: every column as it is plus the features."""
    import pyarrow as pa

    tv: TextVectors = vectors.value
    lookup = pd.Index(tv.texts)
    for rb in batches:
        cols = similarity_columns(rb, tv, lookup)
        yield pa.RecordBatch.from_arrays([*rb.columns, *(pa.array(cols[c]) for c in S.TEXT_SIMILARITY_FEATURES)],
                                         names=[*rb.schema.names, *S.TEXT_SIMILARITY_FEATURES])


def with_text_similarity(df: DataFrame, *, vectors: Broadcast) -> DataFrame:
    """``df`` plus ``schema.TEXT_SIMILARITY_FEATURES`` (doubles) from its ``ad_text`` and history texts by kind.
    ``vectors``: :func:`collect_text_vectors` of frames that include ``df`` (a text it lacks counts as absent)."""
    require_columns(df, (S.AD_TEXT, *S.HISTORY_ITEM_TEXTS), "with_text_similarity")
    clash = [c for c in S.TEXT_SIMILARITY_FEATURES if c in df.columns]
    if clash:
        raise ValueError(f"with_text_similarity: the input already has {clash}")
    schema = StructType([*df.schema.fields, *(StructField(c, DoubleType()) for c in S.TEXT_SIMILARITY_FEATURES)])
    return df.mapInArrow(partial(similarity_partition, vectors=vectors), schema)
