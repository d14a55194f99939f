"""Seconds and GiB/s of the colocation transitions (training/colocation.py) on this device.

Builds a megatron model + Adam on the current device (CUDA if present, else CPU), runs one SFT
step so the optimizer state exists, then times, ``--reps`` times: grads + optimizer state to the
host, params to the host, both back; and the KL reference's restore + offload. Checks that the
state comes back bit for bit. On CUDA the host copies are pinned (the numbers are PCIe/NVLink-C2C
D2H/H2D bandwidth); on CPU they are memcpy plus allocation.

    python benchmarks/colocation.py [--hidden-size 768 --num-layers 6 --reps 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hidden-size", type=int, default=768)
    p.add_argument("--num-layers", type=int, default=6)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    os.environ.setdefault("MASTER_PORT", "29617")
    from megatron_hpt.arguments import build_config, build_parser
    from megatron_hpt.data.tokenizer import build_char_tokenizer
    from megatron_hpt.training import distributed
    from megatron_hpt.training.colocation import HostReference, TrainingStateOffload, split_training_state
    from megatron_hpt.training.offload import training_state_tensors
    from megatron_hpt.training.preflight import read_training_prompts
    from megatron_hpt.training.setup import build_model, build_optimizer, build_reference_model
    from megatron_hpt.training.step import train_step
    from megatron_hpt.training.tasks import build_task

    h = a.hidden_size
    argv = ["--num-layers", str(a.num_layers), "--hidden-size", str(h), "--ffn-hidden-size",
            str(4 * h), "--num-attention-heads", str(h // 64), "--seq-length", "32",
            "--max-position-embeddings", "64", "--normalization", "RMSNorm", "--swiglu",
            "--position-embedding-type", "rope", "--disable-bias-linear",
            "--vocab-size", str(a.vocab_size), "--micro-batch-size", "2",
            "--global-batch-size", "2", "--lr", "1e-4"] + (["--bf16"] if torch.cuda.is_available() else [])
    tok = build_char_tokenizer()
    cfg = build_config(build_parser().parse_args(argv), 1)
    distributed.initialize(seed=1)
    try:
        model = build_model(cfg)
        optimizer, scheduler = build_optimizer(cfg, model)
        task = build_task(cfg, tok, model, read_training_prompts(cfg, tok))
        mb = task.micro_batches(0)
        task.attach_normalizers(mb)
        train_step(model, optimizer, scheduler, mb, task.loss_fn, cfg.seq_length)
        before = [t.detach().clone() for t in training_state_tensors(model, optimizer)]
        params, rest = split_training_state(model, optimizer)
        gib = {"params": _bytes(params) / 2**30, "grads + optimizer": _bytes(rest) / 2**30}
        mem = TrainingStateOffload(model, optimizer, log=None)
        times = {k: [] for k in ("grads + optimizer -> host", "params -> host", "all -> device")}
        for _ in range(a.reps):
            for name, fn in zip(times, (mem.release_optimizer_state, mem.release_params, mem.restore)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        after = training_state_tensors(model, optimizer)
        same = all(torch.equal(x.view(torch.uint8) if x.dim() else x, y.view(torch.uint8) if y.dim() else y)
                   for x, y in zip(after, before))
        ref = HostReference(build_reference_model(cfg, model), log=None)
        ref_times = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            with ref.resident():
                pass
            ref_times.append(time.perf_counter() - t0)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
        n = sum(p.numel() for c in model for p in c.parameters())
        print(f"device: {device}; model: {n / 1e6:.1f}M params ({cfg.params_dtype}); "
              f"state comes back bitwise: {same}")
        print("| transition | GiB | s (median) | GiB/s |")
        print("|---|---|---|---|")
        sizes = [gib["grads + optimizer"], gib["params"], gib["params"] + gib["grads + optimizer"]]
        for (name, ts), size in zip(times.items(), sizes):
            s = statistics.median(ts)
            print(f"| {name} | {size:.3f} | {s:.4f} | {size / s:.2f} |")
        s = statistics.median(ref_times)
        r = ref.offloader.nbytes / 2**30
        print(f"| KL reference restore + offload | {r:.3f} (x2) | {s:.4f} | {2 * r / s:.2f} |")
    finally:
        distributed.destroy()


def _bytes(tensors):
    seen = {}
    for t in tensors:
        seen.setdefault(t.untyped_storage()._cdata, t.untyped_storage().nbytes())
    return sum(seen.values())


if __name__ == "__main__":
    main()
