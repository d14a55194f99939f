#!/usr/bin/env bash
# CPU demo of HPT on megatron-core: no files, GPU or vLLM needed (164 s measured on 2 cores at load
# average ~5 from other jobs, 344 s at ~20; a quiet 2-core machine was not available to time it).
#   stage 1  SFT warm-up on worked solutions of the built-in 2-digit addition task (a 2-layer,
#            hidden-64 GPT; saves a checkpoint)
#   stage 2  HPT (the `hpt` preset as released, gate 0, switch mode) from that checkpoint:
#            4 rollouts per prompt from the embedded engine, 0/1 reward; prompts with no correct
#            rollout are sent to SFT on their demonstration (their rollouts are removed from the
#            batch), the others to RL; `sft share` is the gate's share of SFT prompts (measured:
#            0.00-0.03, the warm-up already solves most prompts), `reward` ~0.7-0.8. The RL term is
#            Σ/L_max as released; L_max follows --rollout-max-response-len (22 here; the paper: 8192).
# Greedy accuracy is measured on 64 held-out problems: pairs (a, b) that training never draws
# (data/arithmetic.py). The last line prints the final accuracy and the wall time.
# Extra flags go to both stages, e.g. `bash examples/cpu_demo.sh --seed 3`.
# Multi-process: prefix with `torchrun --nproc-per-node 2 -m` instead of `python -m` and add
# --tensor-model-parallel-size 2 (see README).
set -euo pipefail
# one thread per process: on 2 cores shared with anything else, 2 threads per process thrash
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
START=$SECONDS
OUT=${OUT:-runs/cpu_demo}
mkdir -p "$OUT"
MODEL=(--num-layers 2 --hidden-size 64 --ffn-hidden-size 256 --num-attention-heads 4
       --num-query-groups 2 --seq-length 32 --max-position-embeddings 64 --normalization RMSNorm
       --swiglu --position-embedding-type rope --disable-bias-linear
       --data-path builtin:arithmetic --clip-grad 1.0 --adam-beta2 0.98)

echo "== stage 1: SFT warm-up =="
python -m megatron_hpt.train "${MODEL[@]}" --loss-preset sft \
  --micro-batch-size 128 --global-batch-size 128 --train-iters 700 \
  --lr 3e-3 --min-lr 1e-4 --lr-warmup-iters 10 --lr-decay-style cosine --lr-decay-iters 700 \
  --log-interval 50 --eval-interval 350 \
  --save "$OUT/sft" --tensorboard-dir "$OUT/tb_sft" "$@"

echo "== stage 2: HPT (gate 0, switch mode, as released) =="
python -m megatron_hpt.train "${MODEL[@]}" --loss-preset hpt \
  --load "$OUT/sft" --finetune \
  --rollout-batch-size 32 --n-samples-per-prompt 4 --rollout-temperature 1.0 \
  --micro-batch-size 160 --global-batch-size 160 --train-iters 30 --lr 1e-4 \
  --log-interval 5 --eval-interval 15 --rollout-max-response-len 22 \
  --save "$OUT/hpt" --tensorboard-dir "$OUT/tb_hpt" "$@" 2>&1 | tee "$OUT/hpt.log"

ACC=$(grep -o "eval greedy accuracy: [0-9.]*" "$OUT/hpt.log" | tail -1 | awk '{print $4}')
echo "cpu demo: held-out greedy accuracy ${ACC} (64 problems never trained on) after $((SECONDS - START)) s wall"
