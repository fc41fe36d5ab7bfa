"""Cross-encoder inputs from token ids: each text is tokenized once, and ``[CLS] ad [SEP] history [SEP]`` pairs
are assembled from the ids by vectorised numpy, with exactly the truncation of the tokenizer's own pair
encoding (``truncation="longest_first"`` of Hugging Face's fast tokenizers). Training
(:func:`adrec_spark.model.inference.tokenize_pairs`) and scoring (the Spark UDF and :class:`Scorer`) both go
through :func:`assemble_pairs`, so the model sees the same inputs in both. Never imports Spark.

A text's ids are kept up to the most a pair can ever use (``max_length - 3``) together with the text's full
token count: the truncation of a pair depends on the full counts (which text is longer), not on the kept ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SPECIAL_TOKENS_IN_PAIR = 3  # [CLS] a [SEP] b [SEP]


@dataclass(frozen=True)
class TokenIds:
    """Ragged token ids of ``n`` texts, without special tokens: text ``i`` has the kept ids
    ``values[offsets[i]:offsets[i + 1]]`` and ``counts[i]`` tokens in all (>= the kept ones)."""

    values: np.ndarray  # int32, flat
    offsets: np.ndarray  # int64, n + 1
    counts: np.ndarray  # int64, n

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.counts) + 1:
            raise ValueError(f"{len(self.offsets)} offsets for {len(self.counts)} texts (need one more)")
        if np.any(self.counts < np.diff(self.offsets)):
            raise ValueError("a text's token count is smaller than the number of its kept ids")

    def __len__(self) -> int:
        return len(self.counts)

    @classmethod
    def from_lists(cls, ids: Sequence[Sequence[int]], counts: Sequence[int] | np.ndarray | None = None) -> TokenIds:
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = (np.concatenate([np.asarray(x, dtype=np.int32) for x in ids]) if len(ids) and offsets[-1]
                  else np.zeros(0, dtype=np.int32))
        return cls(values, offsets, lengths if counts is None else np.asarray(counts, dtype=np.int64))

    @classmethod
    def from_arrow(cls, ids: object, counts: object | None = None) -> TokenIds:
        """From a pyarrow ``list<int32>`` array (nulls count as empty texts) and an optional integer array of
        full token counts (default: the kept ids are all there is)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        if arr.null_count:
            arr = pc.fill_null(arr, pa.scalar([], arr.type))
        offsets = arr.offsets.to_numpy().astype(np.int64)
        values = arr.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)[offsets[0]:offsets[-1]]
        offsets = offsets - offsets[0]
        kept = np.diff(offsets)
        if counts is None:
            return cls(values, offsets, kept)
        c = pc.fill_null(counts, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        return cls(values, offsets, np.maximum(c, kept))

    def lists(self) -> list[list[int]]:
        return [self.values[a:b].tolist() for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]

    def take(self, rows: np.ndarray) -> TokenIds:
        """The texts ``rows`` (repeats allowed), by one vectorised gather."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = np.diff(self.offsets)[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        src = np.repeat(self.offsets[:-1][rows] - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return TokenIds(self.values[src], offsets, self.counts[rows])


def tokenize_texts(tokenizer: object, texts: Sequence[object], max_length: int) -> TokenIds:
    """Each distinct text tokenized once (no special tokens), its ids kept up to ``max_length - 3``."""
    items = ["" if t is None or (isinstance(t, float) and np.isnan(t)) else str(t) for t in texts]
    unique, inverse = np.unique(np.asarray(items, dtype=object), return_inverse=True) if items else ([], [])
    warned = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(warned, dict):  # full counts are wanted here; the model never sees more than max_length
        warned["sequence-length-is-longer-than-the-specified-maximum"] = True
    enc = tokenizer(list(unique), add_special_tokens=False, truncation=False,  # type: ignore[operator]
                    return_attention_mask=False, return_token_type_ids=False)["input_ids"] if len(unique) else []
    keep = max(0, max_length - SPECIAL_TOKENS_IN_PAIR)
    uniq = TokenIds.from_lists([ids[:keep] for ids in enc], [len(ids) for ids in enc])
    return uniq.take(np.asarray(inverse, dtype=np.int64)) if len(items) else uniq


def keep_lengths(first: np.ndarray, second: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """How many tokens of each text a pair keeps, as the fast tokenizers' ``longest_first`` truncation does:
    with ``L = max_length - 3``, a pair that fits is kept whole; else, when the shorter text fits in half of
    ``L`` it is kept and the longer one gets the rest; else each gets half, the odd token going to the longer
    text (to the second on a tie)."""
    if max_length <= SPECIAL_TOKENS_IN_PAIR:
        raise ValueError(f"max_length must exceed {SPECIAL_TOKENS_IN_PAIR} (the special tokens); got {max_length}")
    n1, n2 = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
    budget = max_length - SPECIAL_TOKENS_IN_PAIR
    first_longer = n1 > n2
    short = np.minimum(n1, n2)
    halves = 2 * short > budget
    keep_short = np.where(halves, budget // 2, short)
    keep_long = np.where(halves, budget // 2 + budget % 2, budget - short)
    fits = n1 + n2 <= budget
    k1 = np.where(fits, n1, np.where(first_longer, keep_long, keep_short))
    k2 = np.where(fits, n2, np.where(first_longer, keep_short, keep_long))
    return k1, k2


def pair_lengths(first: TokenIds, second: TokenIds, max_length: int) -> np.ndarray:
    """The assembled length (special tokens included) of every pair, without building it."""
    k1, k2 = keep_lengths(first.counts, second.counts, max_length)
    return k1 + k2 + SPECIAL_TOKENS_IN_PAIR


@dataclass(frozen=True)
class SpecialIds:
    cls: int
    sep: int
    pad: int

    @classmethod
    def of(cls, tokenizer: object) -> SpecialIds:
        t = tokenizer
        return cls(int(t.cls_token_id), int(t.sep_token_id), int(t.pad_token_id or 0))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PairArrays:
    """Padded model inputs, int32 (n, width): cast to int64 on the device."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    attention_mask: np.ndarray


def _gather(ids: TokenIds, rows: np.ndarray, start: np.ndarray, keep: np.ndarray,
            j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(in-segment mask, ids) on the grid ``j`` for a segment beginning at column ``start`` of each row."""
    pos = j - start[:, None]
    inside = (pos >= 0) & (pos < keep[:, None])
    src = ids.offsets[rows][:, None] + pos
    flat = ids.values if len(ids.values) else np.zeros(1, dtype=np.int32)
    return inside, flat[np.clip(src, 0, len(flat) - 1)]


def assemble_pairs(first: TokenIds, second: TokenIds, special: SpecialIds, max_length: int,
                   rows: np.ndarray | None = None) -> PairArrays:
    """``[CLS] first [SEP] second [SEP]`` for the pairs ``rows`` (default: all) of two aligned
    :class:`TokenIds`, truncated as :func:`keep_lengths` says and padded to the longest pair of ``rows``;
    token types 0 for ``[CLS] first [SEP]``, 1 for ``second [SEP]``."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} first texts but {len(second)} second texts")
    rows = np.arange(len(first)) if rows is None else np.asarray(rows, dtype=np.int64)
    k1, k2 = keep_lengths(first.counts[rows], second.counts[rows], max_length)
    total = k1 + k2 + SPECIAL_TOKENS_IN_PAIR
    width = int(total.max()) if len(rows) else SPECIAL_TOKENS_IN_PAIR
    j = np.arange(width, dtype=np.int64)[None, :]
    in1, ids1 = _gather(first, rows, np.ones_like(k1), k1, j)
    in2, ids2 = _gather(second, rows, k1 + 2, k2, j)
    ids = np.where(in1, ids1, np.where(in2, ids2, special.pad)).astype(np.int32)
    ids[:, 0] = special.cls
    sep1, end = k1[:, None] + 1 == j, total[:, None] - 1 == j
    ids[sep1 | end] = special.sep
    mask = j < total[:, None]
    types = (j >= k1[:, None] + 2) & mask
    return PairArrays(ids, types.astype(np.int32), mask.astype(np.int32))
