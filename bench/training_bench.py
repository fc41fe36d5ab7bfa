"""Training throughput: the training job (TorchDistributor, Arrow streaming, logging) against a plain PyTorch
loop over as many rows, in fp32 and bf16 autocast; the ratio is the job's overhead.

Like for like (bench/fairness.py): the same precision, batch, sequence length, steps (both count from the
first step), one process with THREADS torch threads on both sides; what differs is the output (the job
evaluates, checkpoints and logs to MLflow)."""

from __future__ import annotations

import time

from bench.common import ROOT, WORK, run_python, save, table
from bench.fairness import comparison
from bench.scoring_bench import W, prepare

STEPS, BATCH, MAX_LENGTH = 20, 16, 128
THREADS = 2  # torch threads of the plain loop, and OMP_NUM_THREADS of the job's training process

JOB = """
import json, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from bench.common import bench_config
from adrec_spark.logs import configure_logging
from adrec_spark.session import build_spark
from adrec_spark.training.pipeline import run_training
configure_logging("INFO")
cfg = bench_config(Path({work!r}), "train.max_steps={steps}", "train.batch_size={batch}", "model.max_length={ml}",
                   "train.precision={precision}", "train.max_eval_rows=64", "train.zero_shot_baseline=false",
                   "train.log_every_steps=10", "train.promotion_auc_margin=1.0", "train.promotion_ndcg_margin=1.0",
                   "train.shuffle_buffer_rows=4000")
spark = build_spark(cfg)
r = run_training(spark, cfg)
print(json.dumps({{"samples_per_sec": r.summary["samples_per_sec"], "train_seconds": r.summary["train_seconds"],
                  "steps": r.summary["global_step"]}}))
"""


def plain_loop(precision: str) -> dict[str, float]:
    """Read the same examples with pandas; tokenize, forward, backward, step: nothing else."""
    import contextlib

    import deltalake
    import numpy as np
    import torch

    from adrec_spark import schema as S
    from adrec_spark.model.encoder import load_tokenizer, resolve_base_model
    from adrec_spark.model.relevance import ModelSpec, build_model
    from adrec_spark.training.split import split_pandas

    df = split_pandas(deltalake.DeltaTable(str(W / "lakehouse" / S.TRAINING_EXAMPLES)).to_pandas())
    df = df[df[S.SPLIT] == S.TRAIN].head(STEPS * BATCH)
    base = resolve_base_model("all-MiniLM-L6-v2")
    spec = ModelSpec(list(S.NUMERIC_FEATURES), [0.0] * 6, [1.0] * 6, max_length=MAX_LENGTH)
    model, tok = build_model(base, spec, seed=0).train(), load_tokenizer(base)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    t0 = time.perf_counter()  # from the first step, as the job counts its samples/s
    for step in range(STEPS):
        b = df.iloc[step * BATCH:(step + 1) * BATCH]
        enc = tok(b[S.AD_TEXT].tolist(), b[S.HISTORY_TEXT].tolist(), truncation="longest_first",
                  max_length=MAX_LENGTH, padding=True, return_tensors="pt")
        with ctx():
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                           token_type_ids=enc["token_type_ids"],
                           numeric=torch.from_numpy(b[list(S.NUMERIC_FEATURES)].to_numpy(np.float32)))
        loss = loss_fn(logits.float(), torch.from_numpy(b[S.LABEL].to_numpy(np.float32)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    return {"samples_per_sec": STEPS * BATCH / seconds, "seconds": seconds}


def run() -> dict[str, object]:
    import torch

    torch.set_num_threads(THREADS)
    prepare()
    rows, comps = [], []
    for precision in ("fp32", "bf16"):
        print(f"plain loop {precision} ...", flush=True)
        plain = plain_loop(precision)
        print(f"training job {precision} ...", flush=True)
        job = run_python(JOB.format(root=str(ROOT), work=str(W), steps=STEPS, batch=BATCH, ml=MAX_LENGTH,
                                    precision=precision), env={"OMP_NUM_THREADS": str(THREADS)})
        if job["steps"] != STEPS:
            raise SystemExit(f"the training job ran {job['steps']} steps, not {STEPS}: not comparable")
        common = {"precision": precision, "cores": THREADS, "processes": 1, "torch_threads": THREADS,
                  "partitions": None, "pairs": STEPS * BATCH, "batch_size": BATCH, "max_length": MAX_LENGTH,
                  "steps": STEPS}
        comps.append(comparison(
            f"job_vs_plain_{precision}",
            {"label": f"training job, {precision}", "rate": job["samples_per_sec"],
             "settings": {**common, "output": "checkpoint, MLflow run and model"}},
            {"label": f"plain loop, {precision}", "rate": plain["samples_per_sec"],
             "settings": {**common, "output": "none"}},
            varies=("output",), note="the job also evaluates on 64 rows and checkpoints within its timed steps"))
        rows.append({"precision": precision, "plain_samples_per_sec": plain["samples_per_sec"],
                     "job_samples_per_sec": job["samples_per_sec"],
                     "job_vs_plain": job["samples_per_sec"] / plain["samples_per_sec"],
                     "job_wall_seconds": job["wall_seconds"], "steps": STEPS, "batch": BATCH})
    print(table(rows, ["precision", "plain_samples_per_sec", "job_samples_per_sec", "job_vs_plain",
                       "job_wall_seconds"]))
    save("training", {"command": "python bench/run.py training", "runs": rows, "comparisons": comps,
                      "max_length": MAX_LENGTH, "work": str(WORK)})
    return {"runs": rows, "comparisons": comps}
