"""The CPU demo's two stages in one process (python, torch and megatron-core are imported once):
SFT warm-up, then HPT from its checkpoint; prints the gate's SFT share per HPT iteration in the
train lines, then one line with the SFT-stage accuracy and the share trend, then the final
held-out greedy accuracy; examples/cpu_demo.sh prints the last line (accuracy and wall time) once
this process has exited (tearing down torch and megatron-core takes seconds).

Run through ``bash examples/cpu_demo.sh`` (which sets the thread count); extra flags go to both
stages, e.g. ``python examples/cpu_demo.py --seed 3``."""
from __future__ import annotations

import os
import sys
import time

#: the shell script's start when it passes it (examples/cpu_demo.sh)
START = float(os.environ.get("CPU_DEMO_START") or time.time())

OUT = os.environ.get("OUT", "runs/cpu_demo")

#: 2 layers, hidden 64 (~0.1M parameters); rows are prompt + worked solution + EOS <= 26 tokens
MODEL = """--num-layers 2 --hidden-size 64 --ffn-hidden-size 256 --num-attention-heads 4
 --num-query-groups 2 --seq-length 28 --max-position-embeddings 64 --normalization RMSNorm
 --swiglu --position-embedding-type rope --disable-bias-linear
 --data-path builtin:arithmetic --clip-grad 1.0 --adam-beta2 0.98""".split()

#: stage 1: a short SFT warm-up, 700 steps of 16 worked solutions at a constant lr 2e-3 (held-out
#: greedy accuracy ~0.3: the model knows the format, rarely the sum)
SFT = f"""--loss-preset sft --micro-batch-size 16 --global-batch-size 16 --train-iters 700
 --lr 2e-3 --lr-warmup-iters 10 --lr-decay-style constant
 --log-interval 100 --eval-interval 700 --save {OUT}/sft --tensorboard-dir {OUT}/tb_sft""".split()

#: stage 2: HPT as in the paper (hpt_clean), 16 prompts x 4 rollouts at T = 1 per step; gate 1:
#: a prompt with at most 1 correct rollout of 4 is trained on its demonstration (SFT), the others
#: by RL. HPT does the rest of the learning, so the gate sends most prompts to SFT at first and
#: fewer as the rollouts get right; the optimizer restarts (--finetune), hence the warm-up;
#: lr 1e-3 cosine to 1e-4 over the 300 steps
HPT = f"""--loss-preset hpt_clean --hpt-gate 1 --load {OUT}/sft --finetune
 --rollout-batch-size 16 --n-samples-per-prompt 4 --rollout-temperature 1.0
 --rollout-max-response-len 20 --micro-batch-size 80 --global-batch-size 80 --train-iters 300
 --lr 1e-3 --min-lr 1e-4 --lr-warmup-iters 10 --lr-decay-style cosine --lr-decay-iters 300
 --log-interval 1 --eval-interval 100 --save {OUT}/hpt --tensorboard-dir {OUT}/tb_hpt""".split()


def _mean(values):
    return sum(values) / max(len(values), 1)


def main(extra) -> int:
    # imported here, not at the top: megatron-core's checkpoint writer starts a helper process
    # (multiprocessing "spawn") that re-imports this file; with torch and megatron-core imported at
    # the top that cost ~6 s of the demo's wall time
    from megatron_hpt.arguments import ConfigError
    from megatron_hpt.train import run
    from megatron_hpt.training import distributed, preflight

    try:
        print("== stage 1: SFT warm-up ==", flush=True)
        sft = run(MODEL + SFT + extra)
        print("== stage 2: HPT (gate 1, switch mode) ==", flush=True)
        hpt = run(MODEL + HPT + extra)
    except ConfigError as e:
        print(f"cpu_demo: error: {preflight.one_line(e)}", file=sys.stderr)
        return 2
    finally:
        if distributed.dist.is_initialized():
            distributed.destroy()
    share = [m["sft share"] for m in hpt["metrics"]]
    k = max(len(share) // 4, 1)
    print(f"cpu demo: held-out greedy accuracy {sft['summary']['eval greedy accuracy']:.3f} after "
          f"SFT; HPT sft share {_mean(share[:k]):.2f} (first {k} steps) -> "
          f"{_mean(share[-k:]):.2f} (last {k}); {time.time() - START:.0f} s so far", flush=True)
    # examples/cpu_demo.sh reads this line and prints the last one after the process has exited
    print(f"cpu demo: final held-out greedy accuracy {hpt['summary']['eval greedy accuracy']:.3f}",
          flush=True)
    return 0


if __name__ == "__main__":  # the checkpoint writer may start worker processes that import this
    sys.exit(main(sys.argv[1:]))
