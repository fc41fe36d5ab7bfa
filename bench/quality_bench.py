"""Quality of the whole pipeline with the real model (landing files -> ETL -> fine-tuning -> evaluation job) and
the method-by-metric table, on one dataset: MovieLens-100k (../shared/data/movielens-100k, PROTOCOL.md; the
default, ``bench/results/quality.json``) or the demo's generated logs (``--dataset demo``,
``bench/results/quality-demo.json``).

The data is read from the shared folder (or generated) and never copied into the repository: landing files and
tables go to bench/.work/<dataset> (git-ignored). ``bench/quality_gpu.py`` reuses the same ETL and config to
fine-tune on all the data on a GPU machine.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT, WORK, machine, run_python, save

# The MovieLens training recipe measured in the README (override with ADREC_QUALITY_SET="k=v,k=v").
# Sized for a 2-core CPU, where fine-tuning MiniLM runs at only ~10-20 examples/s (forward and backward in
# bf16): one epoch over the most recent 12,000 of the 80,000 train rows, pairs cut at 80 tokens (the ad text,
# then the newest history items). More rows, epochs and tokens are the obvious levers on a GPU.
RECIPE = ("model.max_length=80", "train.epochs=1", "train.batch_size=32", "train.max_train_rows=12000",
          "train.learning_rate=5e-5", "train.head_learning_rate=2e-3", "train.eval_every_steps=125",
          "train.early_stopping_patience=2", "train.max_eval_rows=2000", "train.eval_batch_size=128",
          "train.log_every_steps=25", "train.warmup_ratio=0.06")
# `adrec demo`'s generated logs (its default sizes and seed).
DEMO_LOGS = {"n_users": 300, "n_ads": 200, "n_events": 30_000, "n_days": 14, "seed": 0}


@dataclass(frozen=True)
class Dataset:
    """One dataset of the quality benches: its config, its CPU recipe and where its JSON goes."""

    name: str
    files: tuple[str, ...]  # config files (paths or packaged names), before the bench's locations
    overrides: tuple[str, ...]  # after them: model and experiment names
    recipe: tuple[str, ...]  # the CPU training recipe
    result: str  # bench/results/<result>.json of the CPU bench

    @property
    def work(self) -> Path:
        return WORK / self.name


DATASETS = {
    "movielens": Dataset("movielens", (str(ROOT / "conf" / "movielens.yaml"),),
                         ("mlflow.model_name=adrec-movielens", "mlflow.experiment=adrec-movielens"), RECIPE,
                         "quality"),
    # The demo's text carries the users' tastes: the model reads the text-similarity features too, so it starts
    # from the strongest baseline (logistic regression + text similarity) rather than below it; one epoch over
    # every train row (19,200: ~20 min of fine-tuning on 2 cores), not `adrec demo`'s 2,000.
    "demo": Dataset("demo", ("demo",), ("mlflow.model_name=adrec-demo", "mlflow.experiment=adrec-demo"),
                    ("model.text_similarity_features=true", "train.max_train_rows=null",
                     "train.eval_every_steps=300"), "quality-demo"),
}

# The start of every script a step runs in its own process: the bench's config and a Spark session.
SCRIPT_HEAD = """
import datetime as dt, json, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from bench.common import bench_config
from adrec_spark.logs import configure_logging
from adrec_spark.session import build_spark
configure_logging("INFO")
work = Path({work!r})
cfg = bench_config(work, *{overrides!r}, files={files!r})
spark = build_spark(cfg)
"""

STEP = SCRIPT_HEAD + """step = {step!r}
if step == "etl":
    from adrec_spark.etl.pipeline import run_etl
    if {dataset!r} == "movielens":
        from adrec_spark.samples.movielens import default_source, write_landing
        s = write_landing(default_source(), work / "raw")
        first, last = dt.date.fromisoformat(s["first_day"]), dt.date.fromisoformat(s["last_day"])
    else:
        from adrec_spark.samples.generator import GeneratorSpec, generate
        spec = GeneratorSpec(**{demo!r})
        generate(spec, work / "raw")
        first, last = spec.start, spec.start + dt.timedelta(days=spec.n_days - 1)
    r = run_etl(spark, cfg, first, last)
    print(json.dumps({{"training_examples": r.training_examples, "etl_seconds": r.seconds}}))
elif step == "train":
    from adrec_spark.training.pipeline import run_training
    r = run_training(spark, cfg)
    print(json.dumps({{"test_auc": r.test_auc, "pretrained_test_auc": r.pretrained_test_auc,
                      "model_version": r.model_version, "summary": r.summary}}, default=str))
else:
    from adrec_spark.evaluation.pipeline import run_evaluation
    r = run_evaluation(spark, cfg)
    print(json.dumps({{"table": json.loads(r.table.to_json(orient="index")), "report": str(r.report_path),
                      "comparison": json.loads(r.comparison.to_json(orient="index"))}}))
"""


def step(ds: Dataset, name: str, overrides: tuple[str, ...] = (), code: str = STEP,
         **extra: str) -> dict[str, object]:
    """Run one step (``code`` formatted with the dataset's settings and ``extra``) in a fresh interpreter and
    Spark JVM; its last stdout line is its JSON result."""
    return run_python(code.format(root=str(ROOT), work=str(ds.work), files=ds.files,
                                  overrides=(*ds.overrides, *overrides), step=name, dataset=ds.name,
                                  demo=DEMO_LOGS, **extra), timeout=4 * 3600)


def prepare_etl(ds: Dataset, *, fresh: bool = False) -> dict[str, object]:
    """Landing files and the ETL into bench/.work/<dataset>, once (``etl.json`` marks it done)."""
    if ds.name == "movielens":
        from adrec_spark.samples.movielens import default_source

        if not (default_source() / "ratings.parquet").is_file():
            raise SystemExit(f"MovieLens-100k not found at {default_source()} (set ADREC_MOVIELENS)")
    if fresh:
        shutil.rmtree(ds.work, ignore_errors=True)
    ds.work.mkdir(parents=True, exist_ok=True)
    marker = ds.work / "etl.json"
    if not marker.is_file():
        print(f"{ds.name}: landing files + ETL ...", flush=True)
        marker.write_text(json.dumps(step(ds, "etl")))
    return json.loads(marker.read_text())


def effective_max_length(ds: Dataset, recipe: tuple[str, ...]) -> int:
    from adrec_spark.config import load_config

    return load_config(ds.files, overrides=[*ds.overrides, *recipe]).model.max_length


def training_cost(summary: object, *, tokens: int) -> dict[str, object] | None:
    """What fine-tuning cost, from the training summary: examples (train rows used), epochs run (the steps run
    over the steps of an epoch: early stopping ends one part way), tokens per pair, minutes of training, the
    device and precision."""
    if not isinstance(summary, dict) or "train_rows" not in summary:
        return None
    m = machine()
    device = str(summary.get("device", "cpu"))
    if device == "cpu":
        device = f"cpu ({m['cores']} cores, {m['cpu'] or 'CPU not recorded'})"
    per_epoch = int(summary.get("steps_per_epoch") or 0)
    steps = summary.get("global_step")
    epochs = steps / per_epoch if per_epoch and steps is not None else summary.get("epochs_run", 0)
    return {"examples": int(summary["train_rows"]), "epochs": round(float(epochs), 2), "tokens": tokens,
            "minutes": float(summary.get("train_seconds", 0.0)) / 60.0, "device": device,
            "precision": summary.get("precision")}


def _print_tables(ev: dict[str, object]) -> None:
    import pandas as pd

    tbl = pd.DataFrame.from_dict(ev["table"], orient="index")
    cols = [c for c in ("auc", "log_loss", "ndcg@10", "ndcg@5", "mrr", "map@10", "n_users") if c in tbl.columns]
    print(tbl[cols].to_string(float_format=lambda v: f"{v:.4f}", na_rep="-"))
    comparison = pd.DataFrame.from_dict(ev["comparison"], orient="index")
    print()
    counts = [c for c in ("n_users", "users_better", "users_worse") if c in comparison.columns]
    print(comparison.astype({c: int for c in counts}).to_string(float_format=lambda v: f"{v:+.4f}", na_rep="-"))


def run(*, dataset: str = "movielens", fresh: bool = False) -> dict[str, object]:
    ds = DATASETS[dataset]
    etl = prepare_etl(ds, fresh=fresh)
    extra = tuple(x for x in os.environ.get("ADREC_QUALITY_SET", "").split(",") if x)
    recipe = ds.recipe + extra
    again = os.environ.get("ADREC_QUALITY_EVAL_VERSION")  # evaluate a version already trained here, again
    if again:
        trained: dict[str, object] = {"model_version": int(again)}
        print(f"evaluating model version {again} again (no training)", flush=True)
    else:
        print(f"fine-tuning with {recipe} ...", flush=True)
        trained = step(ds, "train", recipe)
        print(f"test AUC {trained['test_auc']:.4f} (pretrained {trained['pretrained_test_auc']})", flush=True)
    print("evaluation job: the model and every baseline ...", flush=True)
    # The version just trained, whether or not it became champion (the bench measures this recipe).
    ev = step(ds, "evaluate", (*recipe, "evaluate.ks=[5, 10]", f"score.model_version={trained['model_version']}"))
    _print_tables(ev)
    summary = trained.get("summary")
    cost = training_cost(summary, tokens=effective_max_length(ds, recipe))
    if cost:
        print(f"\nfine-tuning cost: {cost['examples']:,} examples x {cost['epochs']} epoch(s) at {cost['tokens']} "
              f"tokens, {cost['minutes']:.1f} min on {cost['device']}")
    command = "make bench-quality" if dataset == "movielens" else f"python bench/run.py quality --dataset {dataset}"
    if extra:  # the command reproduces the run: the extra settings are part of it
        command = f"ADREC_QUALITY_SET={','.join(extra)} {command}"
    save(f"quality-eval-v{again}" if again and dataset == "movielens" else
         f"{ds.result}-eval-v{again}" if again else ds.result,
         {"command": (f"ADREC_QUALITY_EVAL_VERSION={again} " if again else "") + command, "dataset": dataset,
          "recipe": recipe, "etl": etl, "training": {k: v for k, v in trained.items() if k != "summary"},
          "cost": cost, "history": summary.get("history") if isinstance(summary, dict) else None,
          "table": ev["table"], "comparison": ev["comparison"], "report": ev["report"]})
    return {"table": ev["table"], "comparison": ev["comparison"]}


if __name__ == "__main__":  # pragma: no cover
    run(fresh=bool(os.environ.get("FRESH")))
