"""Tokens/s of the CPU training step for the demo model at TP=1 vs TP=2 (one run, ratio).

Launches ``python -m megatron_hpt.train`` (TP=1, one process) and
``torchrun --nproc-per-node 2 -m megatron_hpt.train --tensor-model-parallel-size 2`` on the
same model and batch, parses Megatron's ``elapsed time per iteration (ms)`` lines, drops warm-up
iterations and reports median tokens/s. Usage: ``python benchmarks/train_step.py [--iters 12]``.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

#: the model and SFT batch of the CPU demo as of 2026-12-02 (examples/cpu_demo.sh has changed since)
SEQ, BATCH = 32, 128
DEMO_MODEL = ["--num-layers", "3", "--hidden-size", "128", "--ffn-hidden-size", "512",
              "--num-attention-heads", "4", "--num-query-groups", "2", "--seq-length", str(SEQ),
              "--max-position-embeddings", "64", "--normalization", "RMSNorm", "--swiglu",
              "--position-embedding-type", "rope", "--disable-bias-linear",
              "--micro-batch-size", "64", "--global-batch-size", str(BATCH), "--lr", "1e-3"]


def run(cmd, iters, warmup):
    env = dict(os.environ, OMP_NUM_THREADS="1" if "torch.distributed.run" in cmd else "2")
    out = subprocess.run(cmd + DEMO_MODEL + ["--train-iters", str(iters)], env=env,
                         capture_output=True, text=True, check=True).stdout
    ms = [float(m) for m in re.findall(r"elapsed time per iteration \(ms\): ([\d.]+)", out)]
    if len(ms) != iters:
        raise RuntimeError(f"expected {iters} iteration lines, got {len(ms)}:\n{out[-2000:]}")
    return statistics.median(ms[warmup:])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args()
    tokens = SEQ * BATCH
    py = [sys.executable]
    tp1 = run(py + ["-m", "megatron_hpt.train"], a.iters, a.warmup)
    tp2 = run(py + ["-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
                    "megatron_hpt.train", "--tensor-model-parallel-size", "2"], a.iters, a.warmup)
    print("| layout | ms/iteration (median) | tokens/s |")
    print("|---|---|---|")
    print(f"| TP=1 (1 process, 2 threads) | {tp1:.1f} | {tokens / tp1 * 1000:.0f} |")
    print(f"| TP=2 (2 processes, 1 thread each) | {tp2:.1f} | {tokens / tp2 * 1000:.0f} |")
    print(f"TP=2 / TP=1 tokens/s ratio: {tp1 / tp2:.2f}")


if __name__ == "__main__":
    main()
