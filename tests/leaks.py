"""Finding a user's data in files, independently of the code under test: Parquet files are read with pyarrow
(their pages are compressed, so their bytes would not show the text), every other file is searched as bytes."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq


def files_holding(root: Path, ids: set[str], texts: set[str]) -> list[str]:
    """The files under ``root`` that hold one of the user ids (a Parquet ``user_id`` value, or the id quoted as
    in JSON or CSV elsewhere) or one of the texts (anywhere), each with what was found."""
    texts = {t for t in texts if t}
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            values = {str(v) for c in table.column_names if table.schema.field(c).type in ("string", "large_string")
                      for v in table.column(c).to_pylist() if v is not None}
            hits = (ids | texts) & values
            hits |= {t for t in texts for v in values if t in v}
        else:
            data = path.read_bytes()
            hits = {i for i in ids if any(f"{q}{i}{q}".encode() in data for q in ('"', "'"))}
            hits |= {t for t in texts if t.encode() in data}
        if hits:
            found.append(f"{path}: {sorted(hits)[:3]}")
    return found
