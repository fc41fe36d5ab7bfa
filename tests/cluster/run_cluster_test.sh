#!/usr/bin/env bash
# Multi-process cluster test (`make cluster-test`, run by .ci/run): a Spark standalone master and two workers
# (1 core each) on 127.0.0.1, started from the pip-installed Spark; the ETL and scoring jobs submitted to it
# with spark-submit, the package shipped as a zip with --py-files the way a cluster user ships it, every
# storage setting a file:// URI; every table they write compared with the same jobs run in local mode
# (tests/cluster/compare_lakehouses.py).
# The cluster is stopped at exit whatever happens, and the test fails if any of its processes survives.
#
# How the executors are kept from importing the repository instead of the shipped zip: .venv has an
# editable install of adrec_spark (a meta-path finder that a .pth file installs), so any interpreter started
# from .venv could import the working tree. The jobs' Python (driver and executors: spark.pyspark.python and
# spark.pyspark.driver.python) is instead a bare virtualenv, .cluster/exec-venv, whose only addition is a
# .pth line naming .venv's site-packages. A folder named in a .pth file goes on sys.path but the .pth files
# inside it are not run, so the dependencies (pyspark, torch, mlflow...) import and adrec_spark does not,
# except from the zip Spark puts on sys.path for --py-files. tests/cluster/check_shipped_package.py proves
# it on both executors and the driver: adrec_spark.__file__ lies inside the shipped zip, and the same
# interpreter without Spark's paths cannot import adrec_spark at all. PYTHONPATH is unset for the workers
# because Spark passes it on to the executors' Python.
#
# Knobs: CLUSTER_TEST_TRAIN=1 also trains on the executors (TorchDistributor barrier tasks, see the end);
# CLUSTER_TEST_STEP_TIMEOUT (seconds, default 900) bounds each job so that a hung job cannot hang CI.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
CL="$ROOT/.cluster"  # git-ignored; removed by `make clean`
LOGS="$CL/logs"
DATA="$CL/data"
LAKE_A="$CL/lakehouse-cluster"
LAKE_B="$CL/lakehouse-local"
EXEC_PY="$CL/exec-venv/bin/python"
ZIP="$CL/dist/adrec_spark.zip"
START=2024-01-01
END=2024-01-03
WORKER_MEMORY=2g
EXECUTOR_MEMORY=1g
TRAIN_ON_CLUSTER=${CLUSTER_TEST_TRAIN:-0}
STEP_TIMEOUT=${CLUSTER_TEST_STEP_TIMEOUT:-900}

export SPARK_LOCAL_IP=127.0.0.1
export PYTHONUNBUFFERED=1
unset PYTHONPATH
SPARK_HOME=$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
export SPARK_HOME

T0=$(date +%s)
say() { printf '[cluster-test %4ds] %s\n' $(( $(date +%s) - T0 )) "$*"; }
die() { say "FAILED: $*" >&2; exit 1; }

exec 9<"${BASH_SOURCE[0]}"
flock -n 9 || die "another cluster test is running in $ROOT"

# --- the cluster: start, wait, always stop --------------------------------------------------------------

PGIDS=()   # one process group per daemon (setsid): the JVM, the executors it launches, their Python workers
STEP_PID=  # the running job (timeout makes it a process group of its own)

group_alive() { pgrep -g "$1" >/dev/null 2>&1; }

stop_cluster() {
  local rc=$? pg left=()
  trap - EXIT INT TERM
  if [[ -n $STEP_PID ]]; then
    kill -TERM "$STEP_PID" 2>/dev/null || true  # timeout passes it on to the job's whole group
    wait "$STEP_PID" 2>/dev/null || true
  fi
  if ((${#PGIDS[@]})); then
    say "stopping the cluster (process groups ${PGIDS[*]})"
    for pg in "${PGIDS[@]}"; do kill -TERM -- "-$pg" 2>/dev/null || true; done
    for _ in $(seq 1 30); do
      left=()
      for pg in "${PGIDS[@]}"; do group_alive "$pg" && left+=("$pg"); done
      ((${#left[@]})) || break
      sleep 0.5
    done
    for pg in "${left[@]}"; do kill -KILL -- "-$pg" 2>/dev/null || true; done
    sleep 0.5
    left=()
    for pg in "${PGIDS[@]}"; do group_alive "$pg" && left+=("$pg"); done
    if ((${#left[@]})); then
      say "FAILED: processes of the cluster survived: $(pgrep -g "$(IFS=,; echo "${left[*]}")" | tr '\n' ' ')" >&2
      rc=1
    else
      say "cluster stopped: no process left in its process groups"
    fi
    rm -f "$CL/pgids"
  fi
  exit "$rc"
}
trap stop_cluster EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A run killed with SIGKILL could not stop its cluster: stop what it recorded, if that is still ours.
if [[ -f "$CL/pgids" ]]; then
  while read -r pg; do
    if group_alive "$pg" && tr '\0' ' ' <"/proc/$pg/cmdline" 2>/dev/null | grep -qF "$CL"; then
      say "stopping process group $pg left by an earlier run"
      kill -KILL -- "-$pg" 2>/dev/null || true
    fi
  done <"$CL/pgids"
fi
rm -rf "$CL"
mkdir -p "$LOGS" "$CL/dist" "$CL/events" "$CL/work" "$CL/local"

read -r MASTER_PORT MASTER_UI WORKER1_UI WORKER2_UI < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
MASTER="spark://127.0.0.1:$MASTER_PORT"

start_daemon() {  # name class args...: a spark-class JVM in its own process group (pid = pgid), logs in $LOGS
  local name=$1; shift
  SPARK_DAEMON_MEMORY=512m SPARK_LOCAL_DIRS="$CL/local" \
    setsid "$SPARK_HOME/bin/spark-class" "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  PGIDS+=($!)
  echo "$!" >>"$CL/pgids"
}

# Started first: the JVMs come up while the local-mode jobs run; wait_for_workers comes before the first submit.
say "starting a standalone master on $MASTER (UI :$MASTER_UI) and 2 workers (1 core, $WORKER_MEMORY each)"
start_daemon master org.apache.spark.deploy.master.Master --host 127.0.0.1 --port "$MASTER_PORT" \
  --webui-port "$MASTER_UI"
for i in 1 2; do
  ui_var="WORKER${i}_UI"
  mkdir -p "$CL/work/worker$i"
  start_daemon "worker$i" org.apache.spark.deploy.worker.Worker --host 127.0.0.1 --webui-port "${!ui_var}" \
    --cores 1 --memory "$WORKER_MEMORY" --work-dir "$CL/work/worker$i" "$MASTER"
done

alive_workers() {
  curl -fsS --max-time 5 "http://127.0.0.1:$MASTER_UI/json/" 2>/dev/null | "$PY" -c \
    'import json, sys; print(sum(w["state"] == "ALIVE" for w in json.load(sys.stdin)["workers"]))' 2>/dev/null \
    || echo 0
}

wait_for_workers() {
  local i pg
  for i in $(seq 1 180); do
    [[ $(alive_workers) == 2 ]] && { say "2 workers ALIVE at the master"; return; }
    for pg in "${PGIDS[@]}"; do
      group_alive "$pg" || { tail -n 30 "$LOGS"/master.log "$LOGS"/worker*.log >&2; die "cluster daemon $pg exited"; }
    done
    sleep 1
  done
  tail -n 30 "$LOGS"/master.log "$LOGS"/worker*.log >&2
  die "the 2 workers did not register with the master in 180s"
}

run_step() {  # name cmd...: its stdout shown, stderr in $LOGS/name.log (tail shown on failure), time-bounded
  local name=$1 t=$SECONDS rc=0; shift
  timeout -k 30 "$STEP_TIMEOUT" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.log" </dev/null &
  STEP_PID=$!
  wait "$STEP_PID" || rc=$?
  STEP_PID=
  if ((rc)); then
    cat "$LOGS/$name.out"; tail -n 60 "$LOGS/$name.log" >&2
    ((rc != 124)) || die "$name did not finish in ${STEP_TIMEOUT}s (log: $LOGS/$name.log)"
    die "$name exited with $rc (log: $LOGS/$name.log)"
  fi
  sed 's/^/    /' "$LOGS/$name.out"
  say "$name done in $((SECONDS - t))s"
}

# --- what the jobs need: the shipped package, its interpreter, data, a tiny BERT ------------------------

say "building $ZIP and the bare interpreter $EXEC_PY"
"$PY" - "$ROOT/adrec_spark" "$ZIP" <<'EOF'
import sys, zipfile
from pathlib import Path
src, out = Path(sys.argv[1]), sys.argv[2]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for p in sorted(src.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
            z.write(p, p.relative_to(src.parent))
EOF
"$PY" -m venv --without-pip "$CL/exec-venv"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
EXEC_SITE=$("$EXEC_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$SITE" >"$EXEC_SITE/adrec-deps.pth"
if (cd / && "$EXEC_PY" -c 'import adrec_spark' 2>/dev/null); then
  die "$EXEC_PY imports adrec_spark without the zip: the test could not tell the shipped copy from the repository"
fi
(cd / && "$EXEC_PY" -c 'import pyspark, torch, mlflow, delta, transformers') || die "$EXEC_PY lacks dependencies"

say "generating landing files ($START..$END) and a tiny BERT"
"$ROOT/.venv/bin/adrec" generate --out "$DATA" --users 40 --ads 30 --events 2000 --days 3 --start "$START" \
  --seed 11 >"$LOGS/generate.log" 2>&1 || { cat "$LOGS/generate.log" >&2; die "adrec generate"; }
"$PY" - "$ROOT" "$CL/tiny-bert" >"$LOGS/tiny-bert.log" 2>&1 <<'EOF' || { cat "$LOGS/tiny-bert.log" >&2; die "tiny BERT"; }
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.tiny_bert import make_tiny_bert
make_tiny_bert(Path(sys.argv[2]))
EOF

JARS=$(ls "$ROOT"/.jars/*.jar 2>/dev/null | paste -sd, -)
[[ -n "$JARS" ]] || die "no jars in $ROOT/.jars: run make setup"

# Every storage setting is a file:// URI, as on a cluster where they are s3a://, abfss:// or gs:// URIs: Spark
# and the Python side (the trainer reading the exported splits, checkpoints, the model cache) both take them.
settings() {  # lakehouse -> SETS, the --set options of every run (one MLflow store, one model, for both sides)
  SETS=(--set "storage.lakehouse=file://$1" --set "storage.staging=file://$1/_staging"
        --set "storage.raw_events=file://$DATA/events" --set "storage.raw_ads=file://$DATA/ads"
        --set "spark.jars_dir=$ROOT/.jars" --set "spark.conf={spark.ui.enabled: 'false'}"
        --set "mlflow.tracking_uri=sqlite:///$CL/mlflow.db" --set "mlflow.artifact_location=file://$CL/mlartifacts"
        --set "train.checkpoint_dir=file://$CL/checkpoints" --set "model.base_model=$CL/tiny-bert"
        --set model.max_length=64 --set train.epochs=1 --set train.batch_size=16 --set train.precision=fp32
        --set train.max_eval_rows=300 --set score.model_version=1)
}

# spark-submit to the cluster: the package as --py-files, the Delta jars as --jars (an array: run_step runs it
# under timeout, which cannot call a shell function).
SUBMIT=("$SPARK_HOME/bin/spark-submit" --master "$MASTER" --deploy-mode client
  --driver-memory 2g --executor-memory "$EXECUTOR_MEMORY" --executor-cores 1 --total-executor-cores 2
  --py-files "$ZIP" --jars "$JARS"
  --conf "spark.pyspark.python=$EXEC_PY" --conf "spark.pyspark.driver.python=$EXEC_PY"
  --conf spark.driver.host=127.0.0.1 --conf spark.ui.enabled=false
  --conf spark.eventLog.enabled=true --conf "spark.eventLog.dir=file://$CL/events"
  --conf spark.eventLog.compress=false --conf spark.eventLog.rolling.enabled=false)

# --- local mode: ETL, the one training run, scoring ------------------------------------------------------

settings "$LAKE_B"
say "local mode: ETL into $LAKE_B"
run_step local-etl "$ROOT/.venv/bin/adrec" etl --start "$START" --end "$END" "${SETS[@]}"
say "local mode: training model v1, which both sides score with (MLflow store $CL/mlflow.db)"
run_step local-train "$ROOT/.venv/bin/adrec" train "${SETS[@]}"
say "local mode: scoring $END"
run_step local-score "$ROOT/.venv/bin/adrec" score --date "$END" "${SETS[@]}"

# --- the cluster: where adrec_spark comes from, ETL, scoring, the comparison ----------------------------

wait_for_workers
say "cluster: checking that the driver and both executors import adrec_spark from the shipped zip"
run_step cluster-check-package "${SUBMIT[@]}" tests/cluster/check_shipped_package.py --executors 2
settings "$LAKE_A"
SETS+=(--set spark.driver_memory=null)  # spark-submit sets it
say "cluster: ETL into $LAKE_A"
run_step cluster-etl "${SUBMIT[@]}" jobs/etl.py --start "$START" --end "$END" "${SETS[@]}"
say "cluster: scoring $END"
run_step cluster-score "${SUBMIT[@]}" jobs/score.py --date "$END" "${SETS[@]}"

say "comparing the cluster's tables (A) with local mode's (B); executors per application from the event logs"
run_step compare "$PY" tests/cluster/compare_lakehouses.py "$LAKE_A" "$LAKE_B" --event-logs "$CL/events" \
  --executors 2

# The workers' own view, independent of the event logs: each ran an executor for each of the 3 applications.
for i in 1 2; do
  ui_var="WORKER${i}_UI"
  apps=$(curl -fsS --max-time 5 "http://127.0.0.1:${!ui_var}/json/" | "$PY" -c \
    'import json, sys; w = json.load(sys.stdin); print(len({e["appid"] for e in w["executors"] + w["finishedexecutors"]}))')
  [[ $apps -ge 3 ]] || die "worker $i ran executors for $apps applications, expected 3 (check, ETL, score)"
  say "worker $i ran executors for $apps applications"
done

# --- optional: training on the executors (TorchDistributor barrier tasks) -------------------------------
# Off by default: it stops at two faults only a cluster run reaches. adrec_spark/model/trainer.py wraps the
# model in DistributedDataParallel without find_unused_parameters although BERT's pooler gets no gradient
# (any num_processes > 1 fails); adrec_spark/registry/registry.py logs the package folder as MLflow
# code_paths, a path inside the zip when the driver imports adrec_spark from --py-files. With both fixed it
# trains on the two executors and registers v2; then turn it on here.
if [[ $TRAIN_ON_CLUSTER == 1 ]]; then
  say "cluster: training with train.run_on=executors, 2 processes (TorchDistributor barrier tasks)"
  # TorchDistributor runs the training function in torchrun child processes of the barrier tasks: fresh
  # interpreters, without the sys.path entries Spark adds for --py-files. The zip the executor fetched lies
  # in its working directory, which the children inherit; PYTHONPATH names it there.
  run_step cluster-train "${SUBMIT[@]}" --conf spark.executorEnv.PYTHONPATH=adrec_spark.zip jobs/train.py "${SETS[@]}" \
    --set train.run_on=executors --set train.num_processes=2
  grep -q "trained adrec-relevance v2 " "$LOGS/cluster-train.out" || die "training on the cluster registered no v2"
fi

say "cluster test passed in $(( $(date +%s) - T0 ))s"
