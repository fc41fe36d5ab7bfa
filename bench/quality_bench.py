"""Quality on MovieLens-100k (../shared/data/movielens-100k, PROTOCOL.md): the whole pipeline with the real
model (adapter -> ETL -> fine-tuning -> evaluation job) and the method-by-metric table.

The data is read from the shared folder and never copied into the repository: landing files and tables go
to bench/.work/movielens (git-ignored).
"""

from __future__ import annotations

import json
import os
import shutil

from bench.common import ROOT, WORK, run_python, save

W = WORK / "movielens"
# The training recipe measured in the README (override with ADREC_QUALITY_SET="k=v,k=v").
# Sized for a 2-core CPU, where fine-tuning MiniLM runs at only ~10-20 examples/s (forward and backward in
# bf16): one epoch over the most recent 12,000 of the 80,000 train rows, pairs cut at 80 tokens (the ad text,
# then the newest history items). More rows, epochs and tokens are the obvious levers on a GPU.
RECIPE = ("model.max_length=80", "train.epochs=1", "train.batch_size=32", "train.max_train_rows=12000",
          "train.learning_rate=5e-5", "train.head_learning_rate=2e-3", "train.eval_every_steps=125",
          "train.early_stopping_patience=2", "train.max_eval_rows=2000", "train.eval_batch_size=128",
          "train.log_every_steps=25", "train.warmup_ratio=0.06")

STEP = """
import datetime as dt, json, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from bench.common import bench_config
from adrec_spark.config import load_config, replace
from adrec_spark.logs import configure_logging
from adrec_spark.session import build_spark
configure_logging("INFO")
work = Path({work!r})
base = load_config([{root!r} + "/conf/movielens.yaml"])
cfg = bench_config(work, "mlflow.model_name=adrec-movielens", "mlflow.experiment=adrec-movielens",
                   *["etl." + k + "=" + str(v) for k, v in {etl!r}.items()], *{overrides!r})
spark = build_spark(cfg)
step = {step!r}
if step == "etl":
    from adrec_spark.data.movielens import write_landing
    from adrec_spark.etl.pipeline import run_etl
    s = write_landing({src!r}, work / "raw")
    r = run_etl(spark, cfg, dt.date.fromisoformat(s["first_day"]), dt.date.fromisoformat(s["last_day"]))
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


def _step(step: str, overrides: tuple[str, ...] = ()) -> dict[str, object]:
    from adrec_spark.config import load_config
    from adrec_spark.data.movielens import default_source

    ml = load_config([ROOT / "conf" / "movielens.yaml"]).etl
    etl = {"lookback_days": ml.lookback_days, "dedup_lookback_days": ml.dedup_lookback_days,
           "attribution_hours": ml.attribution_hours, "history_max_items": ml.history_max_items,
           "history_max_chars": ml.history_max_chars, "rate_prior": ml.rate_prior,
           "rate_prior_strength": ml.rate_prior_strength}
    return run_python(STEP.format(root=str(ROOT), work=str(W), etl=etl, overrides=overrides, step=step,
                                  src=str(default_source())), timeout=4 * 3600)


def run(*, fresh: bool = False) -> dict[str, object]:
    from adrec_spark.data.movielens import default_source

    if not (default_source() / "ratings.parquet").is_file():
        raise SystemExit(f"MovieLens-100k not found at {default_source()} (set ADREC_MOVIELENS)")
    if fresh:
        shutil.rmtree(W, ignore_errors=True)
    W.mkdir(parents=True, exist_ok=True)
    extra = tuple(x for x in os.environ.get("ADREC_QUALITY_SET", "").split(",") if x)
    recipe = RECIPE + extra
    marker = W / "etl.json"
    if not marker.is_file():
        print("MovieLens adapter + ETL ...", flush=True)
        marker.write_text(json.dumps(_step("etl")))
    again = os.environ.get("ADREC_QUALITY_EVAL_VERSION")  # evaluate a version already trained here, again
    if again:
        trained: dict[str, object] = {"model_version": int(again)}
        print(f"evaluating model version {again} again (no training)", flush=True)
    else:
        print(f"fine-tuning with {recipe} ...", flush=True)
        trained = _step("train", recipe)
        print(f"test AUC {trained['test_auc']:.4f} (pretrained {trained['pretrained_test_auc']})", flush=True)
    print("evaluation job: the model and every baseline ...", flush=True)
    # The version just trained, whether or not it became champion (the bench measures this recipe).
    ev = _step("evaluate", (*recipe, "evaluate.ks=[5, 10]", f"score.model_version={trained['model_version']}"))
    import pandas as pd

    tbl = pd.DataFrame.from_dict(ev["table"], orient="index")
    cols = [c for c in ("auc", "log_loss", "ndcg@10", "ndcg@5", "mrr", "map@10", "n_users") if c in tbl.columns]
    print(tbl[cols].to_string(float_format=lambda v: f"{v:.4f}", na_rep="-"))
    comparison = pd.DataFrame.from_dict(ev["comparison"], orient="index")
    print()
    counts = [c for c in ("n_users", "users_better", "users_worse") if c in comparison.columns]
    print(comparison.astype({c: int for c in counts}).to_string(float_format=lambda v: f"{v:+.4f}", na_rep="-"))
    summary = trained.get("summary")
    save(f"quality-eval-v{again}" if again else "quality",
         {"command": (f"ADREC_QUALITY_EVAL_VERSION={again} " if again else "") + "make bench-quality",
          "recipe": recipe, "etl": json.loads(marker.read_text()),
          "training": {k: v for k, v in trained.items() if k != "summary"},
          "history": summary.get("history") if isinstance(summary, dict) else None,
          "table": ev["table"], "comparison": ev["comparison"], "report": ev["report"]})
    return {"table": ev["table"], "comparison": ev["comparison"]}


if __name__ == "__main__":  # pragma: no cover
    run(fresh=bool(os.environ.get("FRESH")))
