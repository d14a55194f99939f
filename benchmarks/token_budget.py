"""Two CPU measurements of the HPT training step, each pair of variants interleaved in one process
(the machine is shared: compare ratios, not absolute times).

1. ``budget``: useful (loss-mask, non-padding) tokens/s of one HPT step on rows whose response
   lengths follow a long-tailed law between 8 and the maximum, micro-batches padded to
   --seq-length (fixed --micro-batch-size rows) vs a token budget of the same tokens per
   micro-batch (--max-tokens-per-micro-batch = micro-batch-size x seq-length).
2. ``recompute``: wall time of an HPT step of the CPU demo model (as of 2026-12-03 morning; 16 prompts
   x 4 rollouts + 16 demonstrations, seq 32, micro-batches of 40 rows) with the old-log-prob
   pass (forward_logprobs, then the step) vs without it (old log-probs from the training forward).

Usage: ``python benchmarks/token_budget.py [--reps 5]``."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

DEMO = ["--num-layers", "3", "--hidden-size", "128", "--ffn-hidden-size", "512",
        "--num-attention-heads", "4", "--num-query-groups", "2", "--normalization", "RMSNorm",
        "--swiglu", "--position-embedding-type", "rope", "--disable-bias-linear", "--lr", "1e-4",
        "--loss-preset", "hpt"]


def hpt_rows(n_prompts, n, seq, vocab, lengths, g):
    """n rollouts + 1 demonstration per prompt; prompt 8 tokens, response lengths given."""
    rows = n_prompts * (n + 1)
    tokens = torch.randint(4, vocab, (rows, seq), generator=g)
    mask = torch.zeros(rows, seq)
    for i, L in enumerate(lengths):
        mask[i, 8:8 + L - 8] = 1.0
        tokens[i, L:] = 0
    is_demo = torch.tensor(([False] * n + [True]) * n_prompts)
    on = torch.tensor([float(not d) for d in is_demo])
    return dict(tokens=tokens, labels=tokens.roll(-1, 1), loss_mask=mask,
                position_ids=torch.arange(seq).expand(rows, seq).contiguous(),
                old_logprobs=-2.0 * mask, is_demo=is_demo, on_policy_weight=on,
                sft_weight=is_demo.float(), demo_rl_weight=torch.zeros(rows),
                advantages=torch.randn(rows, generator=g) * on)


def setup(seq, micro, rows, n_prompts, n):
    from megatron_hpt.arguments import build_config, build_parser
    from megatron_hpt.training import distributed
    from megatron_hpt.training.setup import build_model, build_optimizer
    args = build_parser().parse_args(DEMO + ["--seq-length", str(seq), "--max-position-embeddings",
                                             str(seq), "--micro-batch-size", str(micro),
                                             "--global-batch-size", str(rows),
                                             "--rollout-batch-size", str(n_prompts),
                                             "--n-samples-per-prompt", str(n)])
    cfg = build_config(args, 1, tokenizer_vocab_size=80)
    distributed.initialize(seed=1)
    model = build_model(cfg)
    return cfg, model, *build_optimizer(cfg, model)


def step(cfg, model, opt, sched, rows, budget, recompute):
    from megatron_hpt.training import packing
    from megatron_hpt.training.loss_head import LossHead
    from megatron_hpt.training.step import forward_logprobs, train_step
    t0 = time.perf_counter()
    index = packing.plan(rows, cfg.micro_batch_size, budget)
    mbs = packing.build(rows, index, bool(budget))
    head = LossHead(cfg.loss)
    if recompute:
        for mb, (lp, ent) in zip(mbs, forward_logprobs(model, mbs, cfg.seq_length)):
            mb["old_logprobs"], mb["old_entropy"] = lp * mb["loss_mask"], ent
    else:
        head.old_from_forward = True
    head.attach_normalizers(mbs)
    train_step(model, opt, sched, mbs, head, cfg.seq_length)
    return time.perf_counter() - t0, sum(mb["tokens"].numel() for mb in mbs), len(mbs)


def bench_budget(reps):
    seq, micro, n_prompts, n = 512, 8, 8, 4
    rows_n = n_prompts * (n + 1)
    g = torch.Generator().manual_seed(0)
    # long tail: log-normal response lengths, median ~60 tokens, clipped to [8, seq - 8]
    resp = torch.exp(torch.randn(rows_n, generator=g) * 1.0 + 4.1).clamp(8, seq - 8).long()
    lengths = [8 + int(r) for r in resp]
    cfg, model, opt, sched = setup(seq, micro, rows_n, n_prompts, n)
    rows = hpt_rows(n_prompts, n, seq, 80, lengths, g)
    useful = int(rows["loss_mask"].sum())
    times = {"padded": [], "budget": []}
    shape = {}
    for r in range(reps + 1):
        for name, budget in (("padded", None), ("budget", micro * seq)):
            dt, fed, nmb = step(cfg, model, opt, sched, rows, budget, recompute=False)
            shape[name] = (fed, nmb)
            if r:  # the first round warms up
                times[name].append(dt)
    print(f"rows {rows_n}, response lengths min {min(resp)} median {int(resp.median())} "
          f"max {max(resp)}; useful tokens {useful}")
    print("| variant | tokens fed | micro-batches | s/step (median) | useful tokens/s |")
    print("|---|---|---|---|---|")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in times:
        fed, nmb = shape[name]
        print(f"| {name} | {fed} | {nmb} | {med[name]:.3f} | {useful / med[name]:.0f} |")
    print(f"budget / padded useful tokens/s: {med['padded'] / med['budget']:.2f}")


def bench_recompute(reps):
    seq, micro, n_prompts, n = 32, 40, 16, 4
    rows_n = n_prompts * (n + 1)
    g = torch.Generator().manual_seed(1)
    lengths = [int(v) for v in torch.randint(14, seq, (rows_n,), generator=g)]
    cfg, model, opt, sched = setup(seq, micro, rows_n, n_prompts, n)
    rows = hpt_rows(n_prompts, n, seq, 80, lengths, g)
    times = {"with recompute pass": [], "without (training forward)": []}
    for r in range(reps + 1):
        for name, rec in (("with recompute pass", True), ("without (training forward)", False)):
            dt, _, _ = step(cfg, model, opt, sched, rows, None, recompute=rec)
            if r:
                times[name].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("| HPT step, CPU demo size | ms (median) |")
    print("|---|---|")
    for k, v in med.items():
        print(f"| {k} | {1000 * v:.1f} |")
    a, b = med["without (training forward)"], med["with recompute pass"]
    print(f"without / with: {a / b:.2f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--only", choices=("budget", "recompute"), default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    from megatron_hpt.training import distributed
    for name, fn in (("budget", bench_budget), ("recompute", bench_recompute)):
        if a.only in (None, name):
            fn(a.reps)
            distributed.destroy()


if __name__ == "__main__":
    main()
