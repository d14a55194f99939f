#!/usr/bin/env bash
# CPU demo of HPT on megatron-core: no files, GPU or vLLM needed (~3-4 minutes on 2 cores).
#   stage 1  SFT warm-up on worked solutions of the built-in arithmetic task (saves a checkpoint)
#   stage 2  HPT from that checkpoint: 4 rollouts per prompt from the embedded engine, 0/1 reward,
#            the gate sends prompts with no correct rollout to SFT on their demonstration and the
#            others to RL; watch `sft share` fall and `reward` rise. The RL term is Σ/L_max as
#            released; L_max follows --rollout-max-response-len (26 here; the paper: 8192).
# Extra flags go to both stages, e.g. `bash examples/cpu_demo.sh --seed 3`.
# Multi-process: prefix with `torchrun --nproc-per-node 2 -m` instead of `python -m` and add
# --tensor-model-parallel-size 2 (see README).
set -euo pipefail
OUT=${OUT:-runs/cpu_demo}
MODEL=(--num-layers 3 --hidden-size 128 --ffn-hidden-size 512 --num-attention-heads 4
       --num-query-groups 2 --seq-length 32 --max-position-embeddings 64 --normalization RMSNorm
       --swiglu --position-embedding-type rope --disable-bias-linear
       --data-path builtin:arithmetic --clip-grad 1.0 --log-interval 10)

echo "== stage 1: SFT warm-up =="
python -m megatron_hpt.train "${MODEL[@]}" --loss-preset sft \
  --micro-batch-size 64 --global-batch-size 128 --train-iters 200 \
  --lr 2e-3 --lr-warmup-iters 10 --eval-interval 100 \
  --save "$OUT/sft" --tensorboard-dir "$OUT/tb_sft" "$@"

echo "== stage 2: HPT (gate 0, switch mode, as released) =="
python -m megatron_hpt.train "${MODEL[@]}" --loss-preset hpt \
  --load "$OUT/sft" --finetune --no-load-optim \
  --rollout-batch-size 16 --n-samples-per-prompt 4 --rollout-temperature 1.0 \
  --micro-batch-size 40 --train-iters 120 --lr 3e-4 --lr-warmup-iters 10 --eval-interval 40 \
  --rollout-max-response-len 26 \
  --save "$OUT/hpt" --tensorboard-dir "$OUT/tb_hpt" "$@"
