"""EGSPO's entropy gate (SPEC §4.5): w = g + (1 − g)·a per rollout token."""
from __future__ import annotations

import torch
import torch.distributed as dist


def entropy_threshold(entropies: torch.Tensor, rho: float, group=None) -> float:
    """τ_B = (1 − ρ)-quantile of the valid-token entropies of the whole batch (SPEC §4.5).

    entropies: [n] valid tokens of this rank (all micro-batches). With ``group`` the values of
    every rank are all-gathered first (one all_gather of the sizes, one of the padded values),
    so every rank gets the same τ_B. Linear interpolation (torch.quantile).
    """
    values = entropies.detach().reshape(-1).double()
    if group is not None and dist.get_world_size(group) > 1:
        world = dist.get_world_size(group)
        size = torch.tensor([values.numel()], dtype=torch.long, device=values.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size, group=group)
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
        padded[: values.numel()] = values
        gathered = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded, group=group)
        values = torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)])
    if values.numel() == 0:
        return 0.0
    return float(torch.quantile(values, 1.0 - rho))


def gate(entropy, cfg, threshold):
    """g per token, detached, [B, T] (SPEC §4.5).

    quantile: 1[H ≥ τ_B] with τ_B from entropy_threshold; absolute: 1[H ≥ egspo_tau];
    soft: σ((H − τ_B)/κ); egspo_gate_one: g ≡ 1 (ablation that gives CHORD-φ).
    """
    h = entropy.detach()
    if cfg.egspo_gate_one:
        return torch.ones_like(h)
    if cfg.egspo_gate_mode == "absolute":
        return (h >= cfg.egspo_tau).to(h.dtype)
    if threshold is None:
        raise ValueError(f"egspo_gate_mode={cfg.egspo_gate_mode!r} needs "
                         "normalizers.egspo_threshold (compute_normalizers with old_entropy)")
    if cfg.egspo_gate_mode == "quantile":
        return (h >= threshold).to(h.dtype)
    if cfg.egspo_gate_mode == "soft":
        return torch.sigmoid((h - threshold) / cfg.egspo_kappa)
    raise ValueError(f"egspo gate mode {cfg.egspo_gate_mode!r} has no gate")


def attenuation(logprobs, cfg):
    """a per token, detached, [B, T]: phi sg(p(1−p)), 4phi sg(4p(1−p)), constant λ,
    zero (ablation a ≡ 0: the hard 80/20 mask) (SPEC §4.5)."""
    p = torch.exp(logprobs.detach())
    kind = cfg.egspo_attenuation
    if kind == "phi":
        return p * (1.0 - p)
    if kind == "4phi":
        return 4.0 * p * (1.0 - p)
    if kind == "constant":
        return torch.full_like(p, cfg.egspo_lambda)
    if kind == "zero":
        return torch.zeros_like(p)
    raise ValueError(f"unknown egspo attenuation {kind!r}")


def egspo_weight(logprobs, entropy, cfg, threshold):
    """(w, g): w = g + (1 − g)·a and the gate g, both [B, T] and detached."""
    g = gate(entropy, cfg, threshold)
    return g + (1.0 - g) * attenuation(logprobs, cfg), g
