"""The paper's claim on a toy task: SFT, GRPO, LUFFY, CHORD-φ, HPT and EGSPO on the built-in
arithmetic task (2-digit addition with worked solutions), at an equal budget.

Protocol (one process, CPU; sized to run in ~10-15 min on a shared 2-core machine):
  model    the CPU demo's: 2 layers, hidden 64 (examples/cpu_demo.sh);
  warm-up  one SFT run from scratch (``--warmup-iters`` steps of 128 demonstrations, seed 0),
           saved once and shared by every method and seed, so that rollouts have signal;
  methods  from that checkpoint, each method runs ``--steps`` optimizer steps on the same
           number of training prompts per step (``--prompts``); the RL methods sample
           ``--n`` rollouts per prompt (LUFFY, CHORD-φ, HPT and EGSPO also get the prompt's
           demonstration row, HPT only for the prompts its gate sends to SFT); SFT trains on
           the prompts' demonstrations. The same lr schedule for every method (``--lr``;
           constant unless ``--min-lr`` sets a cosine decay over the steps, after
           ``--lr-warmup-iters``); Adam restarts from the warm-up;
  seeds    ``--seeds`` seeds per method (data order, sampling, and the held-out set);
  eval     before training and every ``--eval-every`` steps: greedy accuracy on 64 held-out
           problems (a hash split of the pairs that training never draws) and avg@8 (8
           samples at T = 1 on 32 held-out problems, mean correctness).
Writes ``benchmarks/methods.json`` and ``benchmarks/methods.png`` (needs matplotlib: the
``bench`` extra) and prints the table for RESULTS.md. Usage:
``python benchmarks/methods.py [--steps 24] [--seeds 3]``; the CPU demo's protocol (a short
constant-lr warm-up, then the method anneals) is ``--warmup-iters 700 --warmup-batch 16
--warmup-lr 2e-3 --warmup-decay constant --steps 300 --lr 1e-3 --min-lr 1e-4
--lr-warmup-iters 10 --eval-every 50 --hpt-preset hpt_clean --hpt-gate 1``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

MODEL = ["--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "256",
         "--num-attention-heads", "4", "--num-query-groups", "2", "--seq-length", "32",
         "--max-position-embeddings", "64", "--normalization", "RMSNorm", "--swiglu",
         "--position-embedding-type", "rope", "--disable-bias-linear",
         "--data-path", "builtin:arithmetic", "--clip-grad", "1.0", "--log-interval", "1000",
         "--adam-beta2", "0.98"]
#: method -> loss preset and extra flags (same lr and budget for all)
METHODS = {
    "SFT": ["--loss-preset", "sft"],
    "GRPO": ["--loss-preset", "grpo"],
    "LUFFY": ["--loss-preset", "luffy"],
    "CHORD-phi": ["--loss-preset", "chord_phi"],
    "HPT": ["--loss-preset", "hpt"],  # --hpt-preset / --hpt-gate change it
    "EGSPO": ["--loss-preset", "egspo"],
}


def build(argv):
    """The trainer's objects for ``argv`` (what train.run builds before its loop)."""
    from megatron_hpt.arguments import build_config, build_parser
    from megatron_hpt.data.tokenizer import load_tokenizer
    from megatron_hpt.training import distributed
    from megatron_hpt.training.checkpoint import load_checkpoint
    from megatron_hpt.training.setup import build_model, build_optimizer
    from megatron_hpt.training.preflight import read_training_prompts
    from megatron_hpt.training.tasks import build_task
    args = build_parser().parse_args(argv)
    tok = load_tokenizer("builtin:char")
    cfg = build_config(args, 1, tokenizer_vocab_size=len(tok))
    prompts = read_training_prompts(cfg, tok)
    distributed.initialize(seed=cfg.seed)
    model = build_model(cfg)
    optimizer, scheduler = build_optimizer(cfg, model)
    if cfg.load:
        load_checkpoint(cfg.load, model, None, scheduler, finetune=True)
    return cfg, tok, model, optimizer, scheduler, build_task(cfg, tok, model, prompts)


def evaluate(cfg, tok, engine, n_greedy=64, n_sampled=32, k=8):
    """(greedy accuracy on n_greedy held-out problems, avg@k at T = 1 on n_sampled)."""
    from megatron_hpt.data.prompts import BUILTIN, HELD_OUT_SEED_OFFSET, PromptSource
    from megatron_hpt.rewards import reward_fn
    from megatron_hpt.rollout import SamplingParams
    from megatron_hpt.training.tasks import greedy_accuracy
    greedy = greedy_accuracy(engine, cfg, tok, n_greedy)["eval greedy accuracy"]
    items = PromptSource(BUILTIN, tok, cfg.seed + HELD_OUT_SEED_OFFSET, held_out=True).items(
        0, n_sampled)
    room = cfg.seq_length + 1 - max(len(it.prompt_ids) for it in items)
    samples = engine.generate([it.prompt_ids for it in items], k, SamplingParams(
        temperature=1.0, max_new_tokens=room, eos_token_ids=(tok.eos_token_id,), seed=cfg.seed))
    grade = reward_fn("arithmetic")
    correct = [grade(tok.decode(s.response_token_ids, skip_special_tokens=True),
                     items[s.prompt_index].answer) for s in samples]
    return greedy, sum(correct) / len(correct)


def run_method(name, seed, ckpt, a):
    from megatron_hpt.rollout.trainer_engine import TrainerEngine
    from megatron_hpt.training import distributed
    from megatron_hpt.training.step import train_step
    rl = name != "SFT"
    rows = a.prompts * (a.n + int(name != "GRPO"))  # one micro-batch per step (as released)
    batch = ["--micro-batch-size", str(a.prompts), "--global-batch-size", str(a.prompts)] \
        if not rl else ["--rollout-batch-size", str(a.prompts), "--n-samples-per-prompt", str(a.n),
                        "--rollout-temperature", "1.0", "--rollout-max-response-len", "26",
                        "--micro-batch-size", str(rows), "--global-batch-size", str(rows)]
    method = METHODS[name]
    if name == "HPT":
        method = ["--loss-preset", a.hpt_preset] + (
            ["--hpt-gate", str(a.hpt_gate)] if a.hpt_gate is not None else [])
    schedule = ["--lr", str(a.lr), "--lr-warmup-iters", str(a.lr_warmup_iters)] + (
        ["--min-lr", str(a.min_lr), "--lr-decay-style", "cosine", "--lr-decay-iters", str(a.steps)]
        if a.min_lr is not None else ["--lr-decay-style", "constant"])
    argv = MODEL + method + batch + [
        "--load", ckpt, "--finetune", "--no-load-optim", "--train-iters", str(a.steps),
        "--seed", str(seed)] + schedule
    try:
        cfg, tok, model, optimizer, scheduler, task = build(argv)
        engine = task.engine if rl else TrainerEngine(cfg, model, tok)
        curve = {"step": [0], "greedy": [], "avg8": [], "sft_share": [], "reward": []}
        g, s = evaluate(cfg, tok, engine)
        curve["greedy"].append(g)
        curve["avg8"].append(s)
        for it in range(a.steps):
            mbs = task.micro_batches(it)
            task.attach_normalizers(mbs)
            m = train_step(model, optimizer, scheduler, mbs, task.loss_fn, cfg.seq_length)
            m.update(task.after_step())
            if not rl:
                engine.weights_changed()
            curve["sft_share"].append(m.get("sft share"))
            curve["reward"].append(m.get("reward"))
            if (it + 1) % a.eval_every == 0:
                g, s = evaluate(cfg, tok, engine)
                curve["step"].append(it + 1)
                curve["greedy"].append(g)
                curve["avg8"].append(s)
        return curve
    finally:
        distributed.destroy()


def warm_up(a, ckpt):
    from megatron_hpt.train import run
    from megatron_hpt.training import distributed
    try:
        decay = (["--lr-decay-style", "constant"] if a.warmup_decay == "constant" else
                 ["--min-lr", str(a.warmup_lr / 10), "--lr-decay-style", "cosine",
                  "--lr-decay-iters", str(a.warmup_iters)])
        out = run(MODEL + ["--loss-preset", "sft", "--micro-batch-size", str(a.warmup_batch),
                           "--global-batch-size", str(a.warmup_batch),
                           "--train-iters", str(a.warmup_iters), "--lr", str(a.warmup_lr),
                           "--lr-warmup-iters", "10", "--seed", "0", "--save", ckpt] + decay)
        return out["summary"].get("eval greedy accuracy")
    finally:
        distributed.destroy()


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, runs in results.items():
        steps = runs[0]["step"]
        for ax, key in zip(axes[:2], ("greedy", "avg8")):
            ys = [statistics.mean(r[key][i] for r in runs) for i in range(len(steps))]
            ax.plot(steps, ys, marker="o", label=name)
        if name == "HPT":
            share = [statistics.mean(r["sft_share"][i] for r in runs)
                     for i in range(len(runs[0]["sft_share"]))]
            axes[2].plot(range(1, len(share) + 1), share, color="tab:purple")
    axes[0].set_title("held-out greedy accuracy (mean of seeds)")
    axes[1].set_title("held-out avg@8, T = 1 (mean of seeds)")
    axes[2].set_title("HPT: share of prompts in the SFT branch")
    for ax in axes:
        ax.set_xlabel("optimizer step after the shared SFT warm-up")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--warmup-iters", type=int, default=250)
    p.add_argument("--warmup-batch", type=int, default=128, help="demonstrations per warm-up step")
    p.add_argument("--warmup-lr", type=float, default=3e-3)
    p.add_argument("--warmup-decay", choices=("cosine", "constant"), default="cosine",
                   help="cosine: to warmup-lr / 10 over the warm-up")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--eval-every", type=int, default=8)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--min-lr", type=float, default=None,
                   help="cosine decay from --lr to this over --steps (default: constant --lr)")
    p.add_argument("--lr-warmup-iters", type=int, default=0)
    p.add_argument("--hpt-preset", default="hpt", choices=("hpt", "hpt_clean"))
    p.add_argument("--hpt-gate", type=int, default=None, help="default: the preset's")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--reuse-warmup", action="store_true",
                   help="start from the warm-up checkpoint of an earlier run (same --out)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "methods"))
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    ckpt = a.out + "_warmup_ckpt"
    t0 = time.time()
    if a.reuse_warmup and os.path.exists(ckpt + ".json"):
        with open(ckpt + ".json") as f:
            warm = json.load(f)["accuracy"]
    else:
        warm = warm_up(a, ckpt)
        with open(ckpt + ".json", "w") as f:
            json.dump({"accuracy": warm, "iters": a.warmup_iters, "batch": a.warmup_batch,
                       "lr": a.warmup_lr, "decay": a.warmup_decay}, f)
    print(f"warm-up: {a.warmup_iters} SFT steps, held-out greedy accuracy {warm:.3f} "
          f"({time.time() - t0:.0f} s)", flush=True)
    results = {}
    for name in a.methods.split(","):
        results[name] = []
        for seed in range(1, a.seeds + 1):
            t1 = time.time()
            curve = run_method(name, seed, ckpt, a)
            results[name].append(curve)
            print(f"{name:10s} seed {seed}: greedy {curve['greedy']} avg@8 "
                  f"{[round(x, 3) for x in curve['avg8']]} ({time.time() - t1:.0f} s)", flush=True)
    with open(a.out + ".json", "w") as f:
        json.dump(dict(args=vars(a), warmup_accuracy=warm, results=results), f, indent=1)
    plot(results, a.out + ".png")
    print(f"\ntotal {time.time() - t0:.0f} s\n")
    print("| method | greedy start | greedy end (mean ± sd over seeds) | avg@8 end | "
          "best greedy (mean) |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        end = [r["greedy"][-1] for r in runs]
        avg8 = [r["avg8"][-1] for r in runs]
        best = statistics.mean(max(r["greedy"]) for r in runs)
        sd = statistics.stdev(end) if len(end) > 1 else 0.0
        print(f"| {name} | {statistics.mean(r['greedy'][0] for r in runs):.3f} | "
              f"{statistics.mean(end):.3f} ± {sd:.3f} | {statistics.mean(avg8):.3f} | {best:.3f} |")
    if "HPT" in results:
        share = [statistics.mean(r["sft_share"][i] for r in results["HPT"])
                 for i in range(a.steps)]
        print("\nHPT sft share per step (mean of seeds): " + " ".join(f"{x:.2f}" for x in share))


if __name__ == "__main__":
    sys.exit(main())
