"""Shared helpers for the benchmarks: a work folder, a prepared lakehouse with a trained model, JSON output."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work"
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def machine() -> dict[str, object]:
    cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available(), "date": dt.date.today().isoformat()}


def spark_cores(master: str, default_parallelism: int) -> int:
    """A Spark session's task slots: ``N`` of ``local[N]`` (``local``: 1, ``local[*]``: this machine's CPUs),
    ``default_parallelism`` on a cluster. In local mode ``defaultParallelism`` is not the cores: the session sets
    it to the shuffle partitions."""
    m = re.fullmatch(r"local(?:\[\s*(\d+|\*)\s*(?:,\s*\d+\s*)?\])?", master)
    if m is None:
        return default_parallelism
    if m.group(1) is None:
        return 1
    return (os.cpu_count() or 1) if m.group(1) == "*" else int(m.group(1))


def save(name: str, payload: dict[str, object], *, path: Path | None = None) -> Path:
    """Write ``{"machine": ..., **payload}`` to bench/results/<name>.json (or ``path``)."""
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=str))
    print(f"\nwrote {path}")
    return path


def table(rows: list[dict[str, object]], columns: list[str]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: int = 7200) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter (a fresh Spark JVM); its last stdout line is JSON.

    Everything it prints streams through as it comes (stderr directly, stdout line by line: TorchDistributor
    relays the training processes' logs there), so a long step shows its progress."""
    t0 = time.perf_counter()
    # A script file, not `python -c`: under -c, mlflow.pyfunc.log_model ends the process (exit 0, printing
    # "Skipping doctests: No module named 'grpc'") when it validates the input example.
    WORK.mkdir(parents=True, exist_ok=True)
    fd, script = tempfile.mkstemp(suffix=".py", prefix="step-", dir=WORK)
    with os.fdopen(fd, "w") as f:
        f.write(code)
    proc = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    last = ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                last = line
            else:
                sys.stderr.write(line)
        proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
    except BaseException:
        proc.kill()
        raise
    finally:
        os.unlink(script)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark step failed (exit {proc.returncode}); its log is above")
    if not last:
        raise SystemExit("benchmark step printed no result line")
    result = json.loads(last)
    result["wall_seconds"] = time.perf_counter() - t0
    return result


def bench_config(work: Path, *overrides: str, files: tuple[str, ...] = ()):
    """The config of a bench run: ``files`` (paths or packaged names), then every location under ``work``, then
    ``overrides``."""
    from adrec_spark.config import load_config

    return load_config(files, overrides=[
        f"storage.lakehouse={work / 'lakehouse'}", f"storage.raw_events={work / 'raw' / 'events'}",
        f"storage.raw_ads={work / 'raw' / 'ads'}", f"storage.staging={work / 'lakehouse' / '_staging'}",
        f"spark.jars_dir={ROOT / '.jars'}", f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        f"mlflow.artifact_location={work / 'mlartifacts'}", f"train.checkpoint_dir={work / 'checkpoints'}",
        f"evaluate.report_dir={work / 'reports'}", *overrides])
