"""Where the cross-encoder's CPU time goes, by precision (`python bench/run.py profile`; prepares the scoring
bench's world first when it is missing, ~10 minutes).

On the scoring bench's pairs and model: the torch profiler's self CPU time per operator family (matrix
products, attention, GELU, layer norm, copies, the rest) for fp32 and bf16 over the same micro-batches, each
precision's rate without the profiler, the spread of one micro-batch's time scored again and again (how far
this machine's speed moves with nothing changed), int8 dynamic quantization under each quantized engine,
and bf16 again through ``torch.compile`` (inductor; dynamic shapes for dynamic padding), without and with
freezing (weights as constants, prepacked for oneDNN), with the compile seconds. Why bf16 on AMX is not 4x
fp32 on these ~107-token pairs, and what operator fusion would buy. Writes
bench/results/inference-profile-<cpu>.json, ``<cpu>`` naming the CPU's bf16 support
(``adrec_spark.model.inference.cpu_bf16_kind``), since that decides the precisions' ratios.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

from bench.common import save, table

SAMPLE = 1024  # pairs: 16 micro-batches of 64
REPEATS = 30  # the same micro-batch again and again: the spread of this machine's speed
FAMILIES = (  # operator name fragment -> family, first match wins
    ("scaled_dot_product", "attention"), ("softmax", "attention"), ("bmm", "matmul"), ("addmm", "matmul"),
    ("aten::mm", "matmul"), ("matmul", "matmul"), ("linear", "matmul"), ("gelu", "gelu"),
    ("layer_norm", "layer norm"), ("copy_", "copies"), ("contiguous", "copies"), ("to_copy", "copies"),
)


def _family(name: str) -> str:
    return next((fam for frag, fam in FAMILIES if frag in name), "other")


def _inputs(n: int):
    import numpy as np
    import pandas as pd
    from pyspark.sql import SparkSession

    from adrec_spark import schema as S
    from bench.scoring_bench import THROUGHPUT_USERS, _bench_lakehouse, _pairs, prepare

    prepare()  # cached: the scoring bench's world, when that bench has not run here yet
    pairs = _pairs(_bench_lakehouse(f"lakehouse-bench-{THROUGHPUT_USERS}", THROUGHPUT_USERS))
    if (spark := SparkSession.getActiveSession()) is not None:
        spark.stop()  # an idle JVM beside the measurements
    df = pd.read_parquet(pairs).sample(n, random_state=0)
    return list(df[S.AD_TEXT]), list(df[S.HISTORY_TEXT]), df[list(S.NUMERIC_FEATURES)].to_numpy(np.float32)


def _rate(scorer, ads, hist, num) -> float:
    scorer.score(ads[:64], hist[:64], num[:64])  # warm-up
    t0 = time.perf_counter()
    scorer.score(ads, hist, num)
    return len(ads) / (time.perf_counter() - t0)


def _shares(scorer, ads, hist, num) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        scorer.score(ads, hist, num)
    by_family: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        if e.key.startswith("aten::"):
            by_family[_family(e.key)] += e.self_cpu_time_total
    total = sum(by_family.values())
    return {fam: by_family[fam] / total for fam in ("matmul", "attention", "gelu", "layer norm", "copies", "other")}


def _spread(scorer, ads, hist, num) -> dict[str, float]:
    """The same 32 pairs scored REPEATS times in a row: how far this machine's speed moves with nothing
    changed (milliseconds per micro-batch)."""
    a, h, x = ads[:32], hist[:32], num[:32]
    ms = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        scorer.score(a, h, x)
        ms.append(1000 * (time.perf_counter() - t0))
    return {"batch_ms_min": min(ms), "batch_ms_median": statistics.median(ms), "batch_ms_max": max(ms)}


def run() -> dict[str, object]:
    import torch

    from adrec_spark.model.inference import Scorer, cpu_bf16_kind
    from bench.scoring_bench import _model_dir

    ads, hist, num = _inputs(SAMPLE)
    model_dir = _model_dir()
    rows = []
    for precision in ("fp32", "bf16"):
        scorer = Scorer(model_dir, precision=precision, batch_size=64, threads=2)
        rate = _rate(scorer, ads, hist, num)
        rows.append({"precision": precision, "pairs_per_second": rate, **_shares(scorer, ads, hist, num),
                     **_spread(scorer, ads, hist, num)})
        print(f"{precision}: {rate:.1f} pairs/s", flush=True)
    # int8 dynamic quantization by quantized engine (x86 is torch's default; onednn can use AMX/VNNI int8)
    default_engine = torch.backends.quantized.engine
    int8 = {}
    for engine in ("x86", "fbgemm", "onednn"):
        if engine not in torch.backends.quantized.supported_engines:
            continue
        torch.backends.quantized.engine = engine
        int8[engine] = _rate(Scorer(model_dir, precision="int8", batch_size=64, threads=2), ads, hist, num)
        rows.append({"precision": f"int8 ({engine} engine)", "pairs_per_second": int8[engine]})
        print(f"int8 ({engine} engine): {int8[engine]:.1f} pairs/s", flush=True)
    torch.backends.quantized.engine = default_engine
    eager = _rate(Scorer(model_dir, precision="bf16", batch_size=64, threads=2), ads, hist, num)
    compiled, compile_seconds = {}, {}
    import torch._inductor.config as inductor_config

    for freezing in (False, True):
        # freezing: weights become constants, prepacked for oneDNN, and the graph folds around them
        torch._dynamo.reset()
        inductor_config.freezing = freezing
        scorer = Scorer(model_dir, precision="bf16", batch_size=64, threads=2)
        t0 = time.perf_counter()
        scorer.model.encoder = torch.compile(scorer.model.encoder, dynamic=True)
        scorer.score(ads[:256], hist[:256], num[:256])  # compiles (and warms up) the padded lengths seen first
        name = "bf16 torch.compile" + (" (freezing)" if freezing else "")
        compile_seconds[name] = time.perf_counter() - t0
        compiled[name] = _rate(scorer, ads, hist, num)
        rows.append({"precision": name, "pairs_per_second": compiled[name]})
        print(f"{name}: {compiled[name]:.1f} pairs/s", flush=True)
    inductor_config.freezing = False
    print()
    print(table(rows, ["precision", "pairs_per_second", "matmul", "attention", "gelu", "layer norm", "copies",
                       "other"]))
    print(table(rows[:2], ["precision", "batch_ms_min", "batch_ms_median", "batch_ms_max"]))
    out = {"rows": rows, "bf16_vs_fp32": rows[1]["pairs_per_second"] / rows[0]["pairs_per_second"],
           "bf16_vs_fp32_same_batch_fastest": rows[0]["batch_ms_min"] / rows[1]["batch_ms_min"],
           "bf16_vs_fp32_same_batch_median": rows[0]["batch_ms_median"] / rows[1]["batch_ms_median"],
           "compiled_vs_eager_bf16": {k: v / eager for k, v in compiled.items()}, "eager_bf16_same_process": eager,
           "int8_by_engine_vs_fp32": {k: v / rows[0]["pairs_per_second"] for k, v in int8.items()},
           "compile_seconds": compile_seconds, "sample_pairs": SAMPLE,
           # every ratio above compares rows over the same pairs in one process; only the precision, the
           # quantized engine or torch.compile varies
           "held_constant": {"pairs": SAMPLE, "cores": 2, "processes": 1, "torch_threads": 2, "batch_size": 64,
                             "output": "memory"}}
    print(f"\nsame 32 pairs {REPEATS} times: bf16 / fp32 {out['bf16_vs_fp32_same_batch_fastest']:.2f}x at each one's "
          f"fastest, {out['bf16_vs_fp32_same_batch_median']:.2f}x at the median")
    print(f"bf16 / fp32 {out['bf16_vs_fp32']:.2f}x; over eager bf16: "
          + "; ".join(f"{k} {v / eager:.2f}x (compile and first batches {compile_seconds[k]:.0f} s)"
                      for k, v in compiled.items()))
    kind = cpu_bf16_kind()
    save(f"inference-profile-{kind}", {"command": "python bench/run.py profile", "cpu_kind": kind, **out})
    return out
