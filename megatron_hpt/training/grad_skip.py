"""``--skip-grad-norm-above X``: skip an optimizer step whose gradient norm exceeds X.

The released HPT actor (TsinghuaC3I/Unify-Post-Training ``mix_actor.py`` ``_optimizer_step``)
clips the gradients and does not update when the norm (measured before clipping) is not finite
or above ``max_grad_norm`` (80 in its scripts). The non-finite case is ``nonfinite.py``'s; this
is the threshold, checked by ``guarded_optimizer_step`` right after the global norm is known and
before clipping. A skipped step counts in ``number of skipped iterations`` and is logged as
``skipped grad norm``. Off by default.
"""
from __future__ import annotations

import math
from typing import Optional


def over_grad_norm_limit(grad_norm: float, limit: Optional[float]) -> bool:
    """Whether a finite ``grad_norm`` exceeds ``limit`` (None: never)."""
    return limit is not None and math.isfinite(grad_norm) and grad_norm > limit
