"""Weight export throughput (megatron-core params -> HF-named full tensors) vs a plain memory copy.

A random Llama-shaped GPTModel (fp32, local spec) is built at TP=1 (one process) and at TP=2
(two gloo processes). ``export_hf_weights`` is iterated to the end (every HF tensor, gathered
over TP, in 256 MiB buckets) and each yielded tensor is copied once into a fresh buffer, as an
engine's ``load_weights`` would; the reference is the same copy of the same tensors without the
export (``torch.empty_like(t).copy_(t)``). Reported per rank 0: bytes/s of both and their ratio.

    python benchmarks/weight_export.py [--hidden 1024 --layers 4]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.multiprocessing as mp

from megatron_hpt.models import ModelShape, build_gpt_model, transformer_config
from megatron_hpt.training.distributed import free_port, initialize


def _shape(hidden: int, layers: int) -> ModelShape:
    return ModelShape(num_layers=layers, hidden_size=hidden, ffn_hidden_size=4 * hidden, num_attention_heads=16,
                      num_query_groups=8, vocab_size=32000, hf_model_type="llama")


def _rank(rank: int, world: int, port: int, hidden: int, layers: int, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from megatron_hpt.rollout.weights import export_hf_weights
    initialize(world, 1)
    shape = _shape(hidden, layers)
    model = build_gpt_model(shape, transformer_config(shape, tensor_model_parallel_size=world,
                                                      params_dtype=torch.float32))
    list(export_hf_weights([model], shape, 256))  # warm-up
    t = time.perf_counter()
    nbytes, kept = 0, []
    for bucket in export_hf_weights([model], shape, 256):
        for _, tensor in bucket:
            torch.empty_like(tensor).copy_(tensor)
            nbytes += tensor.numel() * tensor.element_size()
            kept.append(tensor)
    t_export = time.perf_counter() - t
    t = time.perf_counter()
    for tensor in kept:
        torch.empty_like(tensor).copy_(tensor)
    t_copy = time.perf_counter() - t
    queue.put((rank, dict(tp=world, bytes=nbytes, export_s=t_export, copy_s=t_copy,
                          export_GBps=nbytes / t_export / 1e9, copy_GBps=nbytes / t_copy / 1e9,
                          ratio=t_copy / t_export)))


def run(world: int, hidden: int, layers: int) -> dict:
    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, hidden, layers, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=900) for _ in procs)
    for p in procs:
        p.join()
    return results[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    a = ap.parse_args()
    print(json.dumps([run(w, a.hidden, a.layers) for w in (1, 2)], indent=2))


if __name__ == "__main__":
    main()
