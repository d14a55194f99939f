"""Megatron-style console lines and TensorBoard scalars, written by the last pipeline stage's
first rank (where the loss lives), like Megatron-LM's ``print_rank_last``."""
from __future__ import annotations

import datetime
from typing import Dict, Optional

import torch.distributed as dist


def is_logging_rank() -> bool:
    return (not dist.is_initialized()) or dist.get_rank() == dist.get_world_size() - 1


def format_iteration_line(iteration: int, train_iters: int, metrics: Dict[str, float],
                          elapsed_ms: float, consumed: int, global_batch_size: int,
                          skipped_total: int) -> str:
    """``iteration N/M | consumed samples | elapsed time per iteration (ms) | learning rate | ...``"""
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    parts = [f" [{now}] iteration {iteration:8d}/{train_iters:8d}",
             f"consumed samples: {consumed:12d}",
             f"elapsed time per iteration (ms): {elapsed_ms:.1f}",
             f"learning rate: {metrics.get('lr', 0.0):.6E}",
             f"global batch size: {global_batch_size:5d}"]
    skip = {"lr", "grad_norm", "skipped"}
    always = {"lm loss", "reward", "sft share"}
    for k in sorted(metrics):  # parts a preset does not use stay exactly 0 and are not printed
        if k not in skip and (metrics[k] != 0.0 or k in always):
            parts.append(f"{k}: {metrics[k]:.6E}")
    parts.append(f"grad norm: {metrics.get('grad_norm', float('nan')):.3f}")
    parts.append(f"number of skipped iterations: {skipped_total:3d}")
    return " | ".join(parts) + " |"


class MetricsLogger:
    """Console + optional TensorBoard (``--tensorboard-dir``); a no-op on non-logging ranks."""

    def __init__(self, tensorboard_dir: Optional[str], log_interval: int = 1):
        self.log_interval = log_interval
        self.writer = None
        if tensorboard_dir and is_logging_rank():
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=tensorboard_dir)

    def log(self, iteration: int, line: str, metrics: Dict[str, float]) -> None:
        if not is_logging_rank():
            return
        if iteration % self.log_interval == 0:
            print(line, flush=True)
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"train/{k.replace(' ', '_')}", v, iteration)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
