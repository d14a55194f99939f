"""KL estimators to a frozen reference policy (SPEC §3), per token."""
from __future__ import annotations

import torch

DELTA_CLAMP = 20.0  # clamp of δ before exp in k3 (verl low_var_kl)
K3_CLAMP = 10.0  # clamp of the k3 value to [−10, 10] (SPEC §3)


def kl_penalty(logprobs, ref_logprobs, kind):
    """Per-token KL estimate with δ = ℓ^ref − ℓ (SPEC §3), [B, T] → [B, T].

    k1 = −δ;  k2 = ½δ²;  k3 = e^δ − δ − 1 clamped to [−10, 10] (δ clamped to ±20 first).
    Differentiable in ``logprobs``; ``ref_logprobs`` is detached.
    """
    delta = ref_logprobs.detach() - logprobs  # [B, T]
    if kind == "k1":
        return -delta
    if kind == "k2":
        return 0.5 * delta * delta
    if kind == "k3":
        d = delta.clamp(-DELTA_CLAMP, DELTA_CLAMP)
        return (torch.exp(d) - d - 1.0).clamp(-K3_CLAMP, K3_CLAMP)
    raise ValueError(f"unknown KL estimator {kind!r}; valid: ['k1', 'k2', 'k3']")
