"""Streaming training data from Parquet through Arrow: record batches, per-rank sharding, a seeded shuffle
buffer. Columns are converted a batch at a time (no Python loop over rows)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adrec_spark import schema as S
from adrec_spark.errors import MissingColumnsError, TrainingDataError
from adrec_spark.io import fs

PAIR_COLUMNS = (S.HISTORY_TEXT, S.AD_TEXT, *S.NUMERIC_FEATURES, S.LABEL, S.RELEVANCE)


@dataclass
class Batch:
    ad_text: list[str]
    history_text: list[str]
    numeric: np.ndarray  # (n, n_features) float32
    label: np.ndarray  # (n,) float32 0/1
    relevance: np.ndarray  # (n,) float32 graded
    extra: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.label)


def _to_batch(table: pa.Table, extra_columns: Sequence[str] = (),
              numeric_features: Sequence[str] = S.NUMERIC_FEATURES) -> Batch:
    numeric = np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float32)
                        for c in numeric_features], axis=1) if table.num_rows else \
        np.zeros((0, len(numeric_features)), np.float32)
    return Batch(
        ad_text=table.column(S.AD_TEXT).fill_null("").to_pylist(),
        history_text=table.column(S.HISTORY_TEXT).fill_null("").to_pylist(),
        numeric=np.nan_to_num(numeric),
        label=table.column(S.LABEL).to_numpy(zero_copy_only=False).astype(np.float32),
        relevance=table.column(S.RELEVANCE).to_numpy(zero_copy_only=False).astype(np.float32),
        extra={c: table.column(c).to_numpy(zero_copy_only=False) for c in extra_columns},
    )


def grouped_order(keys: np.ndarray, rng: np.random.Generator, chunk: int) -> np.ndarray:
    """A random order of the rows in which each group's rows come in runs of ``chunk`` (groups in random order,
    rows in random order within a group, then the runs shuffled): consecutive ``k * chunk`` rows then hold
    about ``k`` groups."""
    n = len(keys)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    _, codes = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    group_rank = rng.permutation(codes.max() + 1)[codes]
    order = np.lexsort((rng.random(n), group_rank))
    runs = [order[i:i + chunk] for i in range(0, n, chunk)]
    return np.concatenate([runs[i] for i in rng.permutation(len(runs))])


class PairDataset:
    """One split (a folder of Parquet files, a local path or a storage URI) of training pairs, in file order
    (the job writes them sorted by time). ``max_rows`` keeps the first rows, or with ``newest`` the last ones
    (the most recent examples). ``numeric_features``: the model's numeric inputs, in its order (the model
    spec's ``numeric_features``)."""

    def __init__(self, path: str | Path, *, max_rows: int | None = None,
                 extra_columns: Sequence[str] = (), newest: bool = False,
                 numeric_features: Sequence[str] = S.NUMERIC_FEATURES) -> None:
        self.path = str(path)
        if not fs.exists(self.path):
            raise TrainingDataError(f"no training data at {self.path}")
        self.dataset = fs.parquet_dataset(self.path)
        self.numeric_features = tuple(numeric_features)
        base = [S.HISTORY_TEXT, S.AD_TEXT, *self.numeric_features, S.LABEL, S.RELEVANCE]
        missing = [c for c in (*base, *extra_columns) if c not in self.dataset.schema.names]
        if missing:
            raise MissingColumnsError(f"training data {self.path}", missing, self.dataset.schema.names)
        self.columns = [*base, *extra_columns]
        self.extra_columns = tuple(extra_columns)
        total = self.dataset.count_rows()
        self.num_rows = min(total, max_rows) if max_rows else total
        self.skip_rows = total - self.num_rows if newest else 0

    def _record_batches(self, rows: int = 8192) -> Iterator[pa.RecordBatch]:
        seen, skip = 0, self.skip_rows
        for rb in self.dataset.to_batches(columns=self.columns, batch_size=rows):
            if seen >= self.num_rows:
                return
            if skip >= rb.num_rows:
                skip -= rb.num_rows
                continue
            take = min(rb.num_rows - skip, self.num_rows - seen)
            seen += take
            yield rb.slice(skip, take)
            skip = 0

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0, rank: int = 0,
                world_size: int = 1, buffer_rows: int = 20000, drop_last: bool = False,
                group_col: str | None = None, groups_per_batch: int = 4) -> Iterator[Batch]:
        """Batches of this rank's shard (row ``i`` belongs to rank ``i % world_size``), in file order or
        through a seeded shuffle buffer. With ``drop_last`` every rank yields exactly
        ``steps_per_epoch(batch_size, world_size)`` batches, so distributed ranks stay in step. With
        ``group_col`` (shuffling only) each batch holds about ``groups_per_batch`` groups (users), so a
        per-user ranking loss has pairs to compare."""
        if group_col is not None and group_col not in self.extra_columns:
            raise ValueError(f"group_col {group_col!r} must be one of the extra columns {self.extra_columns}")
        limit = self.steps_per_epoch(batch_size, world_size) if drop_last else None
        rng = np.random.default_rng([seed, epoch, rank])
        pending: list[pa.Table] = []
        pending_rows, offset, emitted = 0, 0, 0
        chunk = max(1, batch_size // max(1, groups_per_batch))

        def emit(table: pa.Table) -> Iterator[Batch]:
            nonlocal emitted
            if shuffle and group_col is not None:
                table = table.take(pa.array(grouped_order(table.column(group_col).to_numpy(zero_copy_only=False),
                                                          rng, chunk)))
            elif shuffle:
                table = table.take(pa.array(rng.permutation(table.num_rows)))
            full = table.num_rows // batch_size
            for b in range(full):
                if limit is not None and emitted >= limit:
                    return
                emitted += 1
                yield _to_batch(table.slice(b * batch_size, batch_size), self.extra_columns, self.numeric_features)
            rest = table.slice(full * batch_size)
            if rest.num_rows:
                pending.append(rest)

        for rb in self._record_batches():
            idx = np.arange(offset, offset + rb.num_rows)
            offset += rb.num_rows
            mine = rb.filter(pa.array(idx % world_size == rank)) if world_size > 1 else rb
            pending.append(pa.Table.from_batches([mine]))
            pending_rows += mine.num_rows
            if pending_rows >= (buffer_rows if shuffle else batch_size):
                table = pa.concat_tables(pending)
                pending.clear()
                yield from emit(table)
                pending_rows = sum(t.num_rows for t in pending)
        if pending:
            table = pa.concat_tables(pending)
            pending.clear()
            yield from emit(table)
            if pending and not drop_last and (limit is None or emitted < limit):
                yield _to_batch(pa.concat_tables(pending), self.extra_columns, self.numeric_features)

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        return self.num_rows // (batch_size * world_size)

    def read_all(self) -> Batch:
        batches = list(self._record_batches())
        table = pa.Table.from_batches(batches) if batches else self.dataset.to_table(columns=self.columns)
        return _to_batch(table.select(self.columns).slice(0, self.num_rows), self.extra_columns, self.numeric_features)

    def _selected(self, columns: list[str]) -> pa.Table:
        return self.dataset.to_table(columns=columns).slice(self.skip_rows, self.num_rows)

    def numeric_stats(self) -> tuple[list[float], list[float]]:
        """Per-feature mean and standard deviation (standardization of the model's numeric inputs)."""
        table = self._selected(list(self.numeric_features))
        means, stds = [], []
        for c in self.numeric_features:
            col = pc.fill_null(table.column(c).cast(pa.float64()), 0.0)
            means.append(float(pc.mean(col).as_py() or 0.0))
            std = pc.stddev(col).as_py()
            stds.append(float(std) if std and std > 1e-6 else 1.0)
        return means, stds

    def numeric_and_targets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The numeric features (nulls as 0), labels and graded relevance of the selected rows, as arrays."""
        table = self._selected([*self.numeric_features, S.LABEL, S.RELEVANCE])
        numeric = np.stack([pc.fill_null(table.column(c).cast(pa.float64()), 0.0).to_numpy()
                            for c in self.numeric_features], axis=1)
        label = table.column(S.LABEL).to_numpy(zero_copy_only=False).astype(np.float64)
        relevance = table.column(S.RELEVANCE).to_numpy(zero_copy_only=False).astype(np.float64)
        return np.nan_to_num(numeric), label, relevance

    def label_counts(self) -> tuple[int, int]:
        """(negatives, positives) of the selected rows."""
        table = self._selected([S.LABEL])
        positives = int(pc.sum(table.column(S.LABEL)).as_py() or 0)
        return self.num_rows - positives, positives
