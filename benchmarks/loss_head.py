"""Fused vocab-parallel log-prob(+entropy) vs megatron-core's vocab_parallel_cross_entropy.

Forward+backward time (min over repeats, variants interleaved) and extra peak memory on the
same fp32 logits, TP=1 in-process and TP=2 with two gloo processes (each half the vocabulary).

Memory: each (variant, size) runs once in a fresh subprocess; "extra" is the peak resident set
during one forward+backward (``VmHWM`` of /proc/self/status, reset just before by writing 5 to
/proc/self/clear_refs) minus the resident set before it (``VmRSS``), measured after the logits
exist (the non-leaf output of a tiny [N, 4] x [4, V] output layer, as in a model) and a tiny
warm-up call has loaded every kernel. It includes the gradient
and is reported in units of one fp32 logits buffer (tokens × vocab/TP × 4 bytes).
megatron's function works in place on fp32 logits (it overwrites them with the softmax and
returns that storage as the gradient), so its extra is ~0.

    python benchmarks/loss_head.py                  # full table (TP=1, TP=2, memory)
    python benchmarks/loss_head.py --tokens 512 --vocab 32000 --no-tp2 --no-memory
"""
from __future__ import annotations

import argparse
import datetime
import os
import socket
import subprocess
import sys
import time
import warnings

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")

from megatron_hpt.loss import vocab_parallel_logprob_entropy  # noqa: E402

CHUNK = 256
VARIANTS = ("megatron_ce", "fused_lp", f"fused_lp_c{CHUNK}", "megatron_ce+H_torch", "fused_lp_H",
            f"fused_lp_H_c{CHUNK}")


def init_megatron(rank, world, port):
    """gloo world and megatron parallel_state with TP = world (no CUDA call is needed)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    from megatron.core import parallel_state
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=world)
    return parallel_state.get_tensor_model_parallel_group()


def objective(variant, x, y, group):
    """Scalar whose backward is the measured backward: −Σ log p (+ Σ H for the entropy variants)."""
    if variant.startswith("megatron_ce"):
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
        extra = 0.0
        if variant.endswith("+H_torch"):  # the unfused way: entropy from log_softmax (TP=1 only)
            logp_all = torch.log_softmax(x, dim=-1)
            extra = -(logp_all.exp() * logp_all).sum()
        return vocab_parallel_cross_entropy(x, y).sum() + extra
    n = x.shape[0]
    chunk = CHUNK if variant.endswith(f"_c{CHUNK}") else n
    with_h = variant.startswith("fused_lp_H")
    logp, h = vocab_parallel_logprob_entropy(x, y, 1.0, group, chunk, with_entropy=with_h)
    return -logp.sum() + (h.sum() if with_h else 0.0)


def make_inputs(n, vocab_local, rank, seed=0):
    g = torch.Generator().manual_seed(seed + rank)
    logits = torch.randn(n, vocab_local, generator=g)
    target = torch.randint(0, vocab_local * dist.get_world_size(), (n,),
                           generator=torch.Generator().manual_seed(seed))
    return logits, target


def time_variants(n, vocab, repeats, group):
    world = dist.get_world_size()
    base, target = make_inputs(n, vocab // world, dist.get_rank())
    x = base.clone().requires_grad_()
    best = {v: float("inf") for v in VARIANTS}
    for r in range(repeats + 1):
        for v in VARIANTS:
            if world > 1 and v.endswith("H_torch"):
                continue
            with torch.no_grad():
                x.copy_(base)  # megatron overwrites fp32 logits in place
            x.grad = None
            dist.barrier()
            t0 = time.perf_counter()
            objective(v, x, target, group).backward()
            dt = time.perf_counter() - t0
            if r > 0:
                best[v] = min(best[v], dt)
    return best


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timing_worker(rank, world, port, sizes, repeats, threads, out):
    torch.set_num_threads(threads)
    group = init_megatron(rank, world, port)
    for n, vocab in sizes:
        best = time_variants(n, vocab, repeats, group)
        if rank == 0:
            out.append((world, n, vocab, best))
    dist.destroy_process_group()


def _tp2_worker(rank, port, sizes, repeats, threads, queue):
    rows = []
    _timing_worker(rank, 2, port, sizes, repeats, threads, rows)
    if rank == 0:
        queue.put(rows)


def run_timing(sizes, repeats, threads, tp):
    if tp == 1:
        rows = []
        _timing_worker(0, 1, _free_port(), sizes, repeats, threads, rows)
        return rows
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_tp2_worker, args=(_free_port(), sizes, repeats, threads, queue),
                       nprocs=2, join=True, start_method="spawn")
    return queue.get()


def memory_child(variant, n, vocab, threads):
    """One forward+backward in this fresh process; prints the peak-RSS growth in bytes."""
    torch.set_num_threads(threads)
    group = init_megatron(0, 1, _free_port())
    small, small_t = make_inputs(4, vocab, 0)
    objective(variant, small.clone().requires_grad_(), small_t, group).backward()  # warm-up
    # logits as a model makes them: the non-leaf output of an (here tiny) output layer
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, 4, generator=g).requires_grad_()
    weight = torch.randn(vocab, 4, generator=g).requires_grad_()
    x = hidden @ weight.t()  # [N, V]
    target = torch.randint(0, vocab, (n,), generator=g)
    before = _rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    objective(variant, x, target, group).backward()
    print(_rss("VmHWM") - before)


def _rss(field):
    """VmRSS (current) or VmHWM (peak since the last reset) of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_memory(sizes, threads):
    out = {}
    for n, vocab in sizes:
        for v in VARIANTS:
            res = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child", v,
                                  str(n), str(vocab), "--threads", str(threads)],
                                 capture_output=True, text=True, check=True)
            out[(n, vocab, v)] = int(res.stdout.strip().splitlines()[-1]) / (n * vocab * 4)
    return out


def table(timings, memory, threads):
    lines = [f"Run {datetime.date.today()}, device \"2-core CPU\" (shared), fp32 logits, "
             f"torch {torch.__version__}, {threads} thread(s) per process, T = 1, "
             f"c = chunk of {CHUNK} tokens (else one chunk = all tokens). Time: forward+backward, "
             "min over repeats, ms (ratio to megatron_ce; for +H also to megatron_ce+H_torch). "
             "Memory: extra peak RSS in units of one fp32 logits buffer (TP=1).", "",
             "| TP | tokens | vocab | megatron_ce | fused_lp | fused_lp c | megatron_ce+H_torch "
             "| fused_lp+H | fused_lp+H c | memory: " + " / ".join(VARIANTS) + " |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for world, n, vocab, best in timings:
        ref, ref_h = best["megatron_ce"], best["megatron_ce+H_torch"]

        def cell(v):
            t = best[v]
            if t == float("inf"):
                return "-"
            text = f"{t * 1000:.0f}"
            if v != "megatron_ce":
                text += f" ({t / ref:.2f}x"
                if v.startswith("fused_lp_H") and ref_h != float("inf"):
                    text += f"; {t / ref_h:.2f}x"
                text += ")"
            return text

        mem = " / ".join(f"{memory[(n, vocab, v)]:.2f}" for v in VARIANTS) if (
            world == 1 and (n, vocab, VARIANTS[0]) in memory) else "-"
        lines.append(f"| {world} | {n} | {vocab} | " + " | ".join(cell(v) for v in VARIANTS)
                     + f" | {mem} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 152064])
    p.add_argument("--tp2-tokens", type=int, nargs="+", default=[1024])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-tp2", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--memory-child", nargs=3, metavar=("VARIANT", "TOKENS", "VOCAB"))
    a = p.parse_args()
    if a.memory_child:
        v, n, vocab = a.memory_child
        memory_child(v, int(n), int(vocab), a.threads)
        return
    sizes = [(n, v) for v in a.vocab for n in a.tokens]
    timings = run_timing(sizes, a.repeats, a.threads, 1)
    if not a.no_tp2:
        timings += run_timing([(n, v) for v in a.vocab for n in a.tp2_tokens], a.repeats, a.threads, 2)
    memory = {} if a.no_memory else run_memory(sizes, a.threads)
    print(table(timings, memory, a.threads))


if __name__ == "__main__":
    main()
