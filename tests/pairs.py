"""Synthetic training pairs written as the Parquet splits the trainer reads (no Spark needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from adrec_spark import schema as S

TOPICS = ["travel flights hotel", "laptop phone camera", "shoes dress", "fitness gym yoga", "coffee pizza wine"]


def make_pairs(n: int, seed: int) -> pd.DataFrame:
    """Label = the ad's topic matches the user's history topic, plus a numeric signal in ``ad_rate``."""
    rng = np.random.default_rng(seed)
    user_topic = rng.integers(len(TOPICS), size=n)
    ad_topic = np.where(rng.random(n) < 0.5, user_topic, rng.integers(len(TOPICS), size=n))
    match = user_topic == ad_topic
    label = (match & (rng.random(n) < 0.9)) | (~match & (rng.random(n) < 0.1))
    ad_rate = np.clip(0.3 + 0.4 * label + rng.normal(0, 0.15, n), 0, 1)
    df = pd.DataFrame({
        S.HISTORY_TEXT: [f"clicked: {TOPICS[t]} | searched: {TOPICS[t].split()[0]}" for t in user_topic],
        S.AD_TEXT: [f"great {TOPICS[t]} deal | discover our {TOPICS[t].split()[-1]}" for t in ad_topic],
        S.LABEL: label.astype(np.int32),
        S.RELEVANCE: label.astype(np.int32),
        S.USER_ID: [f"u{i % 37}" for i in range(n)],
        S.AD_ID: [f"a{t}" for t in ad_topic],
    })
    for j, c in enumerate(S.NUMERIC_FEATURES):
        df[c] = (ad_rate if c == S.AD_RATE else rng.normal(j, 1.0, n)).astype(np.float32)
    return df


def write_splits(root: Path, *, n_train: int = 256, n_valid: int = 96, n_test: int = 96, seed: int = 0,
                 files_per_split: int = 2) -> Path:
    for i, (split, n) in enumerate(((S.TRAIN, n_train), (S.VALID, n_valid), (S.TEST, n_test))):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        df = make_pairs(n, seed + i)
        bounds = np.linspace(0, n, files_per_split + 1).astype(int)
        for k in range(files_per_split):
            df.iloc[bounds[k]:bounds[k + 1]].to_parquet(folder / f"part-{k}.parquet", index=False)
    return root
