"""Process-group start-up for torchrun, srun (Slurm) and single-process runs.

``initialize`` reads rank/world from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or Slurm
(SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), starts torch.distributed (nccl on GPU, gloo on CPU),
then megatron-core's ``parallel_state`` groups (TP, PP, CP, DP) and its model-parallel RNG.
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_hpt.platform import cuda_available, install_cpu_platform


@dataclass
class WorldInfo:
    rank: int
    """Global rank of this process."""
    world_size: int
    """Number of processes."""
    local_rank: int
    """Rank on this node (selects the GPU)."""


def world_from_env() -> WorldInfo:
    """Rank and world size from torchrun or Slurm variables; a single process when neither is set."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return WorldInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return WorldInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                         int(env.get("SLURM_LOCALID", 0)))
    return WorldInfo(0, 1, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def initialize(tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1,
               context_parallel_size: int = 1, seed: int = 1234,
               virtual_pipeline_model_parallel_size: int | None = None,
               timeout_minutes: int | None = None) -> WorldInfo:
    """Start torch.distributed and megatron-core's parallel groups; idempotent per process."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    world = world_from_env()
    if not cuda_available():
        install_cpu_platform()
        if world.world_size > 1:
            torch.set_num_threads(1)  # several processes on few cores: one thread each
    else:
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        extra = {} if timeout_minutes is None else {"timeout": timedelta(minutes=timeout_minutes)}
        if "MASTER_PORT" not in os.environ:
            if world.world_size > 1:
                raise RuntimeError("MASTER_PORT is not set: launch with torchrun, or export "
                                   "MASTER_ADDR/MASTER_PORT under srun")
            # one process: a private store on a free port, left out of os.environ so that
            # processes this one starts (tools, vLLM, tests) never inherit a port it holds
            extra["init_method"] = f"tcp://127.0.0.1:{free_port()}"
        else:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        dist.init_process_group("nccl" if cuda_available() else "gloo",
                                rank=world.rank, world_size=world.world_size, **extra)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tensor_model_parallel_size,
            pipeline_model_parallel_size=pipeline_model_parallel_size,
            context_parallel_size=context_parallel_size,
            virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        )
    model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)
    return world


def destroy() -> None:
    """Tear down megatron's groups and the process group (tests run several layouts per process)."""
    from megatron.core import parallel_state
    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
