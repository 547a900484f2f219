#!/usr/bin/env bash
# The "Scaling to XXL" table: the memory planner on T5 1.1 large / xl / xxl, prompt
# tuning (P=100), batch 32, 512 input + 8 target tokens, on 8 and 16 simulated devices,
# plus the XXL ablations (each changes one setting of the 8-device row: no remat,
# float32 frozen weights, 1-D activations; and microbatches without remat).
# One JSON per setting in benchmarks/results/plan/; `python benchmarks/plan_table.py`
# renders the markdown. Unscanned XXL compiles take ~30 minutes and ~3 GiB of host
# RAM each; with scan_layers (one compiled layer per stack) a few minutes. Run one
# at a time.
#   benchmarks/plan_table.sh [model ...]      (default: xxl xl large)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=benchmarks/results/plan
mkdir -p "$OUT"
# model devices data,model remat frozen_dtype act_dims [scan] [microbatches]
plan() {
  local model=$1 devices=$2 mesh=$3 remat=$4 frozen=$5 act=$6 scan=${7:-False} mb=${8:-None}
  local name="${model}_d${devices}_m${mesh/,/x}_${remat}_${frozen}_act${act}"
  [ "$scan" = True ] && name="${name}_scan"
  [ "$mb" = None ] || name="${name}_mb${mb}"
  [ -s "$OUT/$name.json" ] && return 0
  echo "== $name" >&2
  /usr/bin/time -f "%e s, max RSS %M KB" "$PY" -m prompt_tuning.plan \
    --gin_file="models/t5_1_1_${model}.gin" --gin_file=methods/prompt_tuning.gin \
    --gin_file=runs/prompt_finetune.gin \
    --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 8}" --gin.BATCH_SIZE=32 \
    --gin.t5_preset.remat_policy="'${remat}'" --gin.t5_preset.frozen_dtype="'${frozen}'" \
    --gin.t5_preset.scan_layers="${scan}" --gin.NUM_MICROBATCHES="${mb}" \
    --gin.partitioning.rules.activation_partitioning_dims="${act}" \
    --devices="$devices" --mesh="$mesh" --json > "$OUT/$name.json.tmp" \
    2> "$OUT/$name.log" && mv "$OUT/$name.json.tmp" "$OUT/$name.json"
  tail -1 "$OUT/$name.log" >&2
}
if [ "${1:-}" = ablations ]; then  # XXL, scanned: the base row and one change each
  plan xxl 8 1,8 full bfloat16 2 True
  plan xxl 8 1,8 none bfloat16 2 True
  plan xxl 8 1,8 full float32 2 True
  plan xxl 8 1,8 full bfloat16 1 True
  plan xxl 16 2,8 full bfloat16 1 True
  plan xxl 8 1,8 none bfloat16 2 True 4
  plan xxl 16 2,8 full bfloat16 2 True
  plan xxl 8 1,8 none bfloat16 2 True 8
  plan xxl 16 2,8 none bfloat16 2 True 8
  exit 0
fi
for model in ${@:-xxl xl large}; do
  plan "$model" 8 1,8 full bfloat16 2
  plan "$model" 16 2,8 full bfloat16 2
  plan "$model" 8 1,8 full bfloat16 1
  plan "$model" 8 1,8 none float32 1
  plan "$model" 16 2,8 full bfloat16 1
  plan "$model" 8 1,8 minimal bfloat16 2
done
