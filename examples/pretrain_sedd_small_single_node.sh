#!/usr/bin/env bash
# SEDD-small (absorb) on one node with 8 GPUs: tensor parallel 1, data parallel 8, bf16, the
# distributed optimizer. Data: a Megatron indexed dataset built with tools/preprocess_data.py
# (GPT-2 BPE, EOS after every document), e.g.
#   python tools/preprocess_data.py --input owt.jsonl --output-prefix /data/owt --workers 32
# writes /data/owt_text_document.bin/.idx (Megatron's PREFIX_KEY_document naming).
# Usage: examples/pretrain_sedd_small_single_node.sh /data/owt_text_document /checkpoints/sedd_small
set -euo pipefail
DATA=${1:?data prefix (without .bin/.idx)}
CKPT=${2:?checkpoint directory}
GPUS=${GPUS:-8}
# torchrun sets OMP_NUM_THREADS=1 where it is unset, with a warning on the console: give each
# process its share of the node's cores instead (an OMP_NUM_THREADS you set is kept)
CORES=$(nproc)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((CORES / GPUS > 0 ? CORES / GPUS : 1))}
cd "$(dirname "$0")/.."

torchrun --standalone --nproc_per_node="$GPUS" pretrain_sedd.py \
    --config configs/sedd_small_absorb.yaml \
    --data-path "$DATA" \
    --save "$CKPT" --load "$CKPT" \
    --micro-batch-size 64 --global-batch-size 512 \
    --tensorboard-dir "$CKPT/tensorboard" \
    "${@:3}"
