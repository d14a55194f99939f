"""``--skip-grad-norm-above X``: skip an optimizer step whose gradient norm exceeds X.

The released HPT actor (TsinghuaC3I/Unify-Post-Training ``mix_actor.py`` ``_optimizer_step``)
clips the gradients, and does not update when the norm (measured before clipping) is not finite
or above ``max_grad_norm`` (80 in its scripts). megatron's ``optimizer.step()`` already returns
without an update for a non-finite norm; this module adds the threshold with megatron's own
pieces, in the order ``step()`` runs them: ``prepare_grads`` (gradients to the main copies,
non-finite check), ``get_grad_norm`` (one all-reduce over the model-parallel group, so every
rank takes the same decision), clip by that total norm, ``step_with_ready_grads``.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

from megatron.core.optimizer import optimizer as mcore_optimizer


def step_with_grad_norm_limit(optimizer, limit: Optional[float]) -> Tuple[bool, Optional[float], bool]:
    """(update_successful, grad_norm, skipped_for_norm). ``limit`` None: plain ``step()``."""
    if limit is None:
        ok, grad_norm, _ = optimizer.step()
        return ok, grad_norm, False
    if optimizer.prepare_grads():  # non-finite gradients: megatron's own skip
        return False, None, False
    grad_norm = float(optimizer.get_grad_norm())
    if not math.isfinite(grad_norm) or grad_norm > limit:
        return False, grad_norm, True
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        params = opt.get_parameters()
        if getattr(opt, "is_stub_optimizer", False) or not params or opt.config.clip_grad <= 0:
            continue
        # looked up at call time: platform.py swaps in a CPU version on CPU-only builds
        mcore_optimizer.clip_grad_by_total_norm_fp32(
            params, max_norm=opt.config.clip_grad, total_norm=grad_norm,
            use_decoupled_grad=getattr(opt.config, "use_precision_aware_optimizer_no_fp8_or_ds_fp8",
                                       False))
    return optimizer.step_with_ready_grads(), grad_norm, False
