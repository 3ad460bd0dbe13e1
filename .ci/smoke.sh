#!/usr/bin/env bash
# The console scripts of an installed sedd-megatron, outside any checkout: each one's --help, then
# one short real run of each (preprocess, a 2-step CPU pretrain, export, generate, ELBO eval).
#   .ci/smoke.sh BIN_DIR WORK_DIR      (BIN_DIR: the environment's bin/, with sedd-* in it)
set -euo pipefail
bin="$1"; work="$2"
mkdir -p "$work"; cd "$work"
for tool in sedd-pretrain sedd-generate sedd-eval sedd-convert sedd-preprocess; do
    "$bin/$tool" --help > "help-$tool.txt" 2>&1 || { cat "help-$tool.txt"; echo "smoke: $tool --help failed" >&2; exit 1; }
    grep -q -- "--" "help-$tool.txt" || { echo "smoke: $tool --help printed no options" >&2; exit 1; }
done
mkdir -p data
for i in 1 2 3 4 5 6 7 8; do echo "The quick brown fox jumps over the lazy dog, line $i."; done > in.txt
"$bin/sedd-preprocess" --input in.txt --output-prefix data/tiny --no-progress
"$bin/sedd-pretrain" --num-layers 1 --hidden-size 32 --num-attention-heads 2 --seq-length 32 \
    --max-position-embeddings 32 --sedd-cond-dim 16 --sedd-graph absorb \
    --tokenizer-type NullTokenizer --vocab-size 50257 --micro-batch-size 2 --global-batch-size 2 \
    --mock-data --lr 1e-3 --lr-warmup-iters 1 --train-iters 2 --log-interval 1 --eval-iters 1 --eval-interval 2 \
    --save ckpt --save-interval 2 > pretrain.log 2>&1 || { tail -20 pretrain.log; echo "smoke: sedd-pretrain failed" >&2; exit 1; }
"$bin/sedd-convert" export --load ckpt --out plain
"$bin/sedd-generate" plain --no-detokenize --num-samples 1 --steps 4 --output samples.jsonl
test -s samples.jsonl
"$bin/sedd-eval" --load plain --data in.txt --blocks 1 --num-t-samples 2 --batch-size 1 \
    --no-progress --output elbo.json
test -s elbo.json
echo "smoke: the five console scripts ran (help + a real run each) from $bin"
