"""Small helpers every transform uses."""

from __future__ import annotations

from collections.abc import Iterable

from pyspark.sql import DataFrame

from adrec_spark.errors import MissingColumnsError


def require_columns(df: DataFrame, columns: Iterable[str], where: str) -> None:
    """Raise :class:`MissingColumnsError` naming every column ``where`` needs but ``df`` lacks."""
    present = set(df.columns)
    missing = [c for c in columns if c not in present]
    if missing:
        raise MissingColumnsError(where, missing, df.columns)
