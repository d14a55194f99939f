"""Non-finite loss or gradients: the step is skipped, counted, and the run stops when it repeats;
a checkpoint is never written from non-finite weights.

Megatron-LM skips an iteration when fp16 loss scaling finds inf/nan gradients and counts it in
``number of skipped iterations``. Here the same happens for every precision: after the backward,
the step is skipped (no optimizer update, no LR-schedule step, Adam's moments and step count
untouched) when the loss or the global gradient norm is not finite. Every rank takes the same
decision (one all-reduce of a flag: only the last pipeline stage sees the loss). After
``--max-skipped-iterations`` skipped iterations in a row the run stops with ``NonFiniteStop``.

The skip is decided before clipping (megatron's ``step`` would clip with a NaN norm, which is a
no-op, and then apply the NaN update), so the grad norm is computed at every step, also with
``--clip-grad 0`` (one reduction over the gradients; megatron skips it when clipping is off).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from megatron_hpt.platform import device


class NonFiniteStop(RuntimeError):
    """The run cannot go on: repeated non-finite steps, or non-finite weights at a save."""


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank of the job (a collective)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _sub_optimizers(optimizer) -> List:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def guarded_optimizer_step(optimizer, loss: Optional[float]) -> Tuple[bool, float]:
    """megatron's ``optimizer.step()`` (prepare grads, grad norm, clip, update) with the update
    skipped when ``loss`` (None on ranks that hold no loss) or the gradient norm is not finite on
    any rank. Returns ``(update_successful, grad_norm)``."""
    from megatron.core.optimizer import optimizer as mcore_optimizer  # looked up at call time

    if optimizer.prepare_grads():  # fp16 loss scaling found inf/nan (the scale is already lowered)
        return False, float("nan")
    grad_norm = float(optimizer.get_grad_norm())
    bad_loss = loss is not None and not math.isfinite(loss)
    if any_rank(bad_loss or not math.isfinite(grad_norm)):
        return False, grad_norm
    for opt in _sub_optimizers(optimizer):
        if getattr(opt, "is_stub_optimizer", False) or opt.config.clip_grad <= 0.0:
            continue
        params = opt.get_parameters()
        if params:
            mcore_optimizer.clip_grad_by_total_norm_fp32(
                params, opt.config.clip_grad, grad_norm,
                opt.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    return bool(optimizer.step_with_ready_grads()), grad_norm


class SkipCounter:
    """Skipped iterations: the total (for the log line) and the current run of consecutive ones."""

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.total = 0
        self.consecutive = 0

    def update(self, skipped: bool) -> int:
        """Record one iteration; returns the total so far."""
        self.total += int(skipped)
        self.consecutive = self.consecutive + 1 if skipped else 0
        return self.total

    def check(self, iteration: int, metrics: Dict[str, float]) -> None:
        """Raise ``NonFiniteStop`` once ``max_consecutive`` iterations in a row were skipped."""
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteStop(
                f"stopped at iteration {iteration}: {self.consecutive} iterations in a row were "
                f"skipped (--max-skipped-iterations {self.max_consecutive}) because the loss or the "
                f"gradient norm was not finite (last: lm loss {metrics.get('lm loss', float('nan'))}, "
                f"grad norm {metrics.get('grad_norm', float('nan'))}); no update was applied for them, "
                "and checkpoints only ever hold finite weights. Lower --lr, keep --clip-grad > 0, or "
                "check the data")


def assert_finite_weights(model, iteration: int, save_dir: str) -> None:
    """Raise ``NonFiniteStop`` (on every rank) when any rank's weights hold a non-finite value,
    so that a checkpoint is never written from them."""
    bad = []
    for chunk in model:
        for name, p in chunk.named_parameters():
            if not bool(torch.isfinite(p.detach()).all()):
                bad.append(name)
    if any_rank(bool(bad)):
        raise NonFiniteStop(
            f"not saving iteration {iteration} to {save_dir}: the weights hold non-finite values"
            + (f" ({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} on this rank)" if bad else "")
            + "; the checkpoints already in it are left as they were")
