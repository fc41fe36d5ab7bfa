"""One writer of a multi-process commit race (tests/test_commit_lock.py starts several at once).

``rename``: commits to a plain folder the way Hadoop's local file system lets Delta's log store commit: find the
next free version, check that its file does not exist, then rename a temporary file onto it (a rename that
replaces an existing file). ``--window`` widens the gap between the check and the rename, so that racing
writers meet in it; with ``--lock`` each commit holds :func:`adrec_spark.io.tables.file_lock`. Prints one JSON
line: the versions this writer believes it committed.

``spark``: its own small Spark session replaces the partition ``writer=<id>`` of one Delta table ``--commits``
times with :func:`adrec_spark.io.tables.write_partitions` (each commit's userMetadata names the writer and its
sequence number). ``--no-lock`` turns the commit lock off (to watch the race without it).

Every writer is ready (imports done, Spark started, frames built) before its first commit and then waits for
the ``--writers`` others (files in ``--ready-dir``), so that they start committing together.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adrec_spark.io import tables


def _barrier(ready_dir: str, writer: int, writers: int, timeout_s: float = 300) -> None:
    Path(ready_dir, f"ready-{writer}").touch()
    deadline = time.monotonic() + timeout_s
    while len(list(Path(ready_dir).glob("ready-*"))) < writers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"writer {writer}: the other writers were not ready in {timeout_s:.0f}s")
        time.sleep(0.01)


def rename_writer(folder: Path, writer: int, commits: int, window_s: float, lock: bool) -> list[int]:
    claimed = []
    for seq in range(commits):
        while True:
            guard = tables.file_lock(str(folder / ".lock")) if lock else contextlib.nullcontext()
            with guard:
                versions = [int(p.stem) for p in folder.glob("*.json")]
                version = max(versions, default=-1) + 1
                target = folder / f"{version:020d}.json"
                if target.exists():  # taken since the listing: try the next one
                    continue
                time.sleep(window_s)  # Hadoop: exists() said no ... then the rename
                tmp = folder / f".{writer}-{seq}.tmp"
                tmp.write_text(json.dumps({"writer": writer, "seq": seq}))
                os.rename(tmp, target)
                claimed.append(version)
                break
    return claimed


def spark_writer(table: str, writer: int, commits: int, jars: str, lock: bool, start: Callable[[], None]) -> None:
    from adrec_spark.config import load_config
    from adrec_spark.session import build_spark

    cfg = load_config(overrides=[
        "spark.master=local[1]", "spark.shuffle_partitions=1", f"spark.jars_dir={jars}",
        "spark.driver_memory=768m",
        "spark.conf={'spark.ui.enabled': 'false', "
        "'spark.driver.extraJavaOptions': '-XX:TieredStopAtLevel=1 -XX:+UseSerialGC'}"])
    spark = build_spark(cfg, app_name=f"commit-race-{writer}")
    if not lock:
        tables.commit_lock = lambda *a, **k: contextlib.nullcontext()  # type: ignore[assignment]
    storage = load_config(overrides=[f"storage.lakehouse={Path(table).parent}"]).storage
    frames = [spark.createDataFrame([(writer, seq, i) for i in range(3)], "writer int, seq int, i int")
              for seq in range(commits)]
    start()
    for seq, df in enumerate(frames):
        tables.write_partitions(df, storage, Path(table).name, partition_col="writer", values=[writer],
                                description=f"writer {writer} seq {seq}")
    spark.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["rename", "spark"])
    parser.add_argument("target")
    parser.add_argument("--writer", type=int, required=True)
    parser.add_argument("--commits", type=int, required=True)
    parser.add_argument("--writers", type=int, required=True)
    parser.add_argument("--ready-dir", required=True)
    parser.add_argument("--window", type=float, default=0.02)
    parser.add_argument("--jars", default=str(Path(__file__).resolve().parents[2] / ".jars"))
    parser.add_argument("--lock", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    def start() -> None:
        _barrier(args.ready_dir, args.writer, args.writers)

    if args.mode == "rename":
        start()
        print(json.dumps(rename_writer(Path(args.target), args.writer, args.commits, args.window, args.lock)))
    else:
        spark_writer(args.target, args.writer, args.commits, args.jars, args.lock, start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
