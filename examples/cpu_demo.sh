#!/usr/bin/env bash
# CPU demo: megatron-core on the built-in arithmetic task, no files or GPU needed (~1-2 minutes).
# Extra flags are passed through, e.g. `bash examples/cpu_demo.sh --train-iters 50`.
set -euo pipefail
exec python -m megatron_hpt.train \
  --data-path builtin:arithmetic \
  --num-layers 2 --hidden-size 64 --ffn-hidden-size 256 --num-attention-heads 4 \
  --num-query-groups 2 --seq-length 32 --max-position-embeddings 64 \
  --normalization RMSNorm --swiglu --position-embedding-type rope --disable-bias-linear \
  --micro-batch-size 64 --global-batch-size 128 --train-iters 150 \
  --lr 3e-3 --min-lr 3e-4 --lr-decay-style cosine --lr-warmup-iters 10 --clip-grad 1.0 \
  --loss-preset sft --eval-interval 50 --log-interval 10 \
  --tensorboard-dir runs/cpu_demo "$@"
