"""Text-similarity aggregates from sentence embeddings: the ad's cosine to each of a user's history texts,
reduced to max and mean per row. Plain numpy over embeddings computed once per distinct text (the caller
looks each row's texts up by index), so it runs the same in a Spark task, a benchmark or a GPU box. This
module never imports Spark."""

from __future__ import annotations

import numpy as np


def cosine_aggregates(vectors: np.ndarray, ad_index: np.ndarray, item_index: np.ndarray,
                      item_row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (max, mean, count) of the cosine between the row's ad and each of its items.

    Args:
        vectors: (n_texts, dim) L2-normalised embeddings, so a dot product is a cosine.
        ad_index: (n_rows,) the row's ad text in ``vectors``; -1 for a row without one (its cosines are 0,
            its count still counts the items).
        item_index: (n_items,) each item's text in ``vectors``; -1 for an item without a text (left out).
        item_row: (n_items,) the row each item belongs to, non-decreasing.

    A row without items gets the neutral values 0, 0, 0: "no evidence" rather than a similarity.
    """
    n = len(ad_index)
    ad_index, item_index = np.asarray(ad_index, np.int64), np.asarray(item_index, np.int64)
    item_row = np.asarray(item_row, np.int64)
    if len(item_index) != len(item_row):
        raise ValueError(f"item_index ({len(item_index)}) and item_row ({len(item_row)}) differ in length")
    if len(item_row) and np.any(np.diff(item_row) < 0):
        raise ValueError("item_row must be non-decreasing (items grouped by row)")
    keep = item_index >= 0
    item_index, item_row = item_index[keep], item_row[keep]
    count = np.bincount(item_row, minlength=n).astype(np.float64)
    top, mean = np.zeros(n), np.zeros(n)
    with_ad = ad_index[item_row] >= 0
    rows, items = item_row[with_ad], item_index[with_ad]
    if len(rows):
        cos = np.einsum("ij,ij->i", vectors[items].astype(np.float64), vectors[ad_index[rows]].astype(np.float64))
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        owners = rows[starts]
        top[owners] = np.maximum.reduceat(cos, starts)
        mean[owners] = np.add.reduceat(cos, starts) / np.diff(np.r_[starts, len(rows)])
    return top, mean, count
