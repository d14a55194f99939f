"""Run a test function in N gloo processes on CPU (what torchrun would do), collecting results."""
from __future__ import annotations

import os
import pickle
import traceback

import torch.multiprocessing as mp

from megatron_hpt.training.distributed import free_port


def _worker(rank, world_size, port, fn, args, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        # pickled by value here: tensors sent through the queue as shared memory would vanish
        # when this process exits before the parent reads them
        queue.put((rank, "ok", pickle.dumps(fn(*args))))
    except BaseException:  # report every failure to the parent with its traceback
        queue.put((rank, "error", traceback.format_exc()))


def run_distributed(fn, world_size: int, *args, timeout: float = 300.0):
    """Call ``fn(*args)`` on ranks 0..world_size-1 (fn must be a module-level function) and return
    the list of per-rank return values; raises with the rank's traceback if any rank fails."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, fn, args, queue))
             for r in range(world_size)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in range(world_size):
            rank, status, value = queue.get(timeout=timeout)
            if status == "error":
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            results[rank] = pickle.loads(value)  # our own child's bytes
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world_size)]
