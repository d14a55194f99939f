"""Save-and-exit on a signal (Megatron-LM's ``--exit-signal-handler``), for Slurm requeues.

Slurm's ``#SBATCH --signal=B:USR1@600`` sends SIGUSR1 to the batch shell 600 s before the time
limit; the sbatch script forwards it to the tasks (``examples/slurm/hpt.sbatch``). Here the
handler only records the signal; at each step boundary every rank calls ``should_exit``, which
all-reduces the flag (MAX over the world), so all ranks save the same iteration together and
leave the loop, even if the signal reached only some of them.
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist


class ExitSignalHandler:
    """Installs a handler for ``signal_name`` (e.g. ``"SIGUSR1"``) that sets a flag."""

    def __init__(self, signal_name: str):
        self.signum = getattr(signal, signal_name)
        self.received = False
        self._previous = signal.signal(self.signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = True

    def should_exit(self) -> bool:
        """Collective over the default group: True on every rank when any rank got the signal."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.received
        from megatron_hpt.platform import device
        flag = torch.tensor([1 if self.received else 0], dtype=torch.int32, device=device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        """Put back the handler that was installed before."""
        signal.signal(self.signum, self._previous)
