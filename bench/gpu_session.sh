#!/usr/bin/env bash
# One lent GPU machine's session, as one command from the repository root (no Spark, Java or network there):
#   1. the scorer bench alone on the GPU (bench/results/scorer-gpu.json's source), with the carried MiniLM;
#   2. the GPU quality recipe for MovieLens-100k and the demo data side by side (each a small fraction of one
#      H200), each bounded so that a slow run cannot cost the other its results.
# Prepare here first: python bench/run.py quality-gpu --dataset movielens; ... --dataset demo. Both carries hold
# the same base model; the demo's travels without it (carry its data/ and params.json only), so that one
# transfer stays under 64 MiB. Bring $OUT back and ingest: python bench/run.py quality-gpu --ingest $OUT/<dataset>.
# Limits (seconds): SCORER_S, TRAIN_S. OUT defaults to bench/.work/gpu-session.
set -uo pipefail
OUT="${OUT:-bench/.work/gpu-session}"
ML="${ML_CARRY:-bench/.work/quality-gpu-movielens/carry}"
DEMO="${DEMO_CARRY:-bench/.work/quality-gpu-demo/carry}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/movielens" "$OUT/demo"
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"

timeout "${SCORER_S:-150}" "$PY" bench/run.py scorer --base-model "$ML/model" ${SCORER_ARGS:---pairs 8000 \
  --sweep-pairs 100000 --budgets 16384,32768,65536} --out "$OUT/scorer-gpu.json" > "$OUT/scorer.log" 2>&1
echo "scorer: exit $? ($(date -u +%T))"

# Training tokenizes each batch of string pairs on the host: let the tokenizer use the machine's cores.
export TOKENIZERS_PARALLELISM=true
train() {  # dataset carry
  timeout "${TRAIN_S:-360}" "$PY" -m adrec_spark.model.offline_train --data "$2/data" --params "$2/params.json" \
    --base-model "$ML/model" --out "$OUT/$1" --work "${TMPDIR:-/tmp}/adrec-offline-$1" > "$OUT/$1/train.log" 2>&1
  echo "$1: exit $? ($(date -u +%T))"
}
train movielens "$ML" & ml=$!
train demo "$DEMO" & demo=$!
wait $ml $demo
tail -n 3 "$OUT"/*/train.log
