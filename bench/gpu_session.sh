#!/usr/bin/env bash
# One lent GPU machine's session, as one command from the repository root (no Spark, Java or network there):
#   1. the scorer bench alone on the GPU (bench/results/scorer-gpu.json's source), with the carried MiniLM
#      (SCORER_S=0 skips it);
#   2. the GPU quality recipe's runs side by side (each a small fraction of one H200), each bounded (TRAIN_S)
#      so that a slow run cannot cost the others their results. RUNS lists them, space-separated, as
#      dataset:variant[:KEY=VALUE,KEY=VALUE] (offline_train --set keys), default "movielens:base demo:base".
# Each dataset's runs come back as one archive, $OUT/<dataset>.tgz (<dataset>/<variant>/ inside); ingest here:
#   python bench/run.py quality-gpu --ingest $OUT/<dataset>.tgz   (several variants: picked on validation AUC)
# Prepare here first: python bench/run.py quality-gpu --dataset movielens; ... --dataset demo. Both carries hold
# the same base model; the demo's travels without it (carry its data/ and params.json only), so that one
# transfer stays under 64 MiB. OUT defaults to bench/.work/gpu-session.
set -uo pipefail
OUT="${OUT:-bench/.work/gpu-session}"
ML="${ML_CARRY:-bench/.work/quality-gpu-movielens/carry}"
DEMO="${DEMO_CARRY:-bench/.work/quality-gpu-demo/carry}"
PY="${PYTHON:-python3}"
RUNS_DIR="$(mktemp -d)"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"

if [ "${SCORER_S:-150}" != 0 ]; then
  timeout "${SCORER_S:-150}" "$PY" bench/run.py scorer --base-model "$ML/model" ${SCORER_ARGS:---pairs 8000 \
    --sweep-pairs 100000 --budgets 16384,32768,65536} --out "$OUT/scorer-gpu.json" > "$OUT/scorer.log" 2>&1
  echo "scorer: exit $? ($(date -u +%T))"
fi

# Training tokenizes each batch of string pairs on the host: let the tokenizer use a share of the cores.
export TOKENIZERS_PARALLELISM=true RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-4}"
train() {  # dataset variant KEY=VALUE,...
  local carry dir sets=()
  case "$1" in movielens) carry="$ML" ;; demo) carry="$DEMO" ;; *) echo "unknown dataset $1"; return 2 ;; esac
  [ -n "$3" ] && for kv in ${3//,/ }; do sets+=(--set "$kv"); done
  dir="$RUNS_DIR/$1/$2"
  mkdir -p "$dir"
  timeout "${TRAIN_S:-360}" "$PY" -m adrec_spark.model.offline_train --data "$carry/data" \
    --params "$carry/params.json" --base-model "$ML/model" --out "$dir" --work "$RUNS_DIR/work-$1-$2" \
    "${sets[@]}" > "$dir/train.log" 2>&1
  echo "$1/$2: exit $? ($(date -u +%T))"
}
pids=()
for run in ${RUNS:-movielens:base demo:base}; do
  IFS=: read -r dataset variant sets <<< "$run"
  train "$dataset" "$variant" "${sets:-}" & pids+=($!)
done
wait "${pids[@]}"
for dataset in movielens demo; do
  [ -d "$RUNS_DIR/$dataset" ] || continue
  tail -n 2 "$RUNS_DIR/$dataset"/*/train.log
  tar czf "$OUT/$dataset.tgz" -C "$RUNS_DIR" "$dataset"
done
rm -rf "$RUNS_DIR"
