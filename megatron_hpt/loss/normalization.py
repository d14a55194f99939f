"""Normalization contract (SPEC §6): denominators once per optimizer step, over the global batch.

``compute_normalizers`` sums token and sequence counts over every micro-batch of the step and
all-reduces them (SUM) once over the data-parallel group (context parallelism: see
``compute_normalizers``). ``policy_loss``
divides each micro-batch's sums by these global numbers, so the sum of the micro-batch losses
over all micro-batches and DP ranks is exactly the loss of the whole batch. The trainer must
therefore stop megatron-core (0.16) from averaging again. With ``calculate_per_token_loss=True``:
``pipeline_parallel/schedules.py`` ``forward_step_calc_loss`` no longer divides the loss that a
3-tuple ``loss_func`` returns (no ``/ num_tokens``, no ``/ num_microbatches``, no CP factor);
``DistributedDataParallel`` all-reduces gradients with ``gradient_scaling_factor = 1`` (a sum
over DP × CP); and ``distributed/finalize_model_grads.py`` divides the gradients by the
all-reduced sum of the returned ``num_tokens`` only when that sum is > 0 — so either
``loss_func`` returns ``num_tokens = 0`` or ``finalize_model_grads_func`` is wrapped to pass
``num_tokens=None`` (what ``training/setup.py`` does), and nothing divides twice.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .egspo import entropy_threshold


@dataclass
class Normalizers:
    """Global denominators of one optimizer step (every field is a sum over the global batch)."""

    rl_tokens: float = 0.0
    """valid tokens of rows in the RL term (on-policy rows, plus demonstrations when
    demo_rl_coef > 0), counting only rows whose RL weight is non-zero."""
    rl_sequences: float = 0.0
    """rows with at least one valid token in the RL term."""
    sft_tokens: float = 0.0
    """valid demonstration tokens of the SFT term (rows with non-zero SFT weight)."""
    sft_sequences: float = 0.0
    """demonstration rows of the SFT term."""
    all_tokens: float = 0.0
    """valid tokens of every row (entropy bonus and KL loss)."""
    all_sequences: float = 0.0
    """rows with at least one valid token (entropy bonus and KL loss)."""
    num_micro_batches: float = 0.0
    """micro-batches of the step over all DP ranks (token-sum-norm, micro_batch SFT)."""
    max_response_length: float = 8192.0
    """L_max (constant divisor of seq-mean-token-sum-norm / token-sum-norm)."""
    egspo_threshold: float | None = None
    """τ_B of EGSPO's quantile / soft gate over the batch's valid rollout-token entropies."""


def term_masks(response_mask, cfg, is_demo=None, on_policy_weight=None, demo_rl_weight=None,
               sft_weight=None):
    """Token masks and row weights of each loss term; shared by counting and by the loss.

    Returns dict: rl, sft, all: [B, T] 0/1 masks; rl_weight, sft_weight: [B] row weights
    (coefficient × per-row weight; HPT soft mode passes the per-row weights).
    """
    m = response_mask.to(torch.float64 if not response_mask.is_floating_point()
                         else response_mask.dtype)  # [B, T]
    b = m.shape[0]
    demo = torch.zeros(b, dtype=torch.bool, device=m.device) if is_demo is None else is_demo.bool()
    ones = torch.ones(b, dtype=m.dtype, device=m.device)

    def row(w):
        return ones if w is None else w.detach().to(m.dtype)

    rl_w = torch.where(demo, cfg.demo_rl_coef * row(demo_rl_weight), cfg.rl_coef * row(on_policy_weight))
    sft_w = torch.where(demo, cfg.sft_coef * row(sft_weight), torch.zeros_like(ones))
    return {
        "rl": m * (rl_w != 0).to(m.dtype)[:, None],
        "sft": m * (sft_w != 0).to(m.dtype)[:, None],
        "all": m,
        "rl_weight": rl_w,
        "sft_weight": sft_w,
    }


_MB_KEYS = ("response_mask", "is_demo", "on_policy_weight", "demo_rl_weight", "sft_weight",
            "old_entropy")


def _counted_fields(mb) -> dict:
    """The fields of a micro-batch (``Batch`` or dict) that the counts read."""
    from .batch import Batch
    if isinstance(mb, Batch):
        return {k: getattr(mb, k) for k in _MB_KEYS if getattr(mb, k) is not None}
    unknown = sorted(set(mb) - set(_MB_KEYS))
    if unknown:
        raise ValueError(f"compute_normalizers: unknown micro-batch keys {unknown}; "
                         f"valid: {list(_MB_KEYS)}")
    return mb


def compute_normalizers(micro_batches, cfg, group=None) -> Normalizers:
    """Global denominators for one optimizer step.

    micro_batches: this rank's micro-batches, each a ``Batch`` (loss/batch.py) or a dict with
    ``response_mask`` [B, T] and
    optionally ``is_demo``, ``on_policy_weight``, ``demo_rl_weight``, ``sft_weight`` [B]
    (the same values later passed to ``policy_loss``) and ``old_entropy`` [B, T] (EGSPO
    quantile/soft gate). group: the data-parallel process group; one all-reduce (SUM) of the
    counts over it, plus two all_gathers for the EGSPO quantile.
    Context parallelism: the CP ranks of one DP rank hold slices of the same rows, so pass the
    whole (unsplit) response masks and the DP group (not DP × CP); each CP rank then calls
    policy_loss on its token slice with these normalizers (and response_lengths for
    seq-mean-token-mean), and the sum over CP ranks is the loss of the rows.
    Device: the counts live on the micro-batches' device (the accelerator, as NCCL needs);
    one host sync at the end turns them into floats.
    """
    micro_batches = [_counted_fields(mb) for mb in micro_batches]
    device = micro_batches[0]["response_mask"].device if micro_batches else torch.device("cpu")
    counts = torch.zeros(7, dtype=torch.float64, device=device)
    entropies = []
    for mb in micro_batches:
        masks = term_masks(mb["response_mask"], cfg, mb.get("is_demo"), mb.get("on_policy_weight"),
                           mb.get("demo_rl_weight"), mb.get("sft_weight"))
        for i, key in enumerate(("rl", "sft", "all")):
            counts[2 * i] += masks[key].sum().double()
            counts[2 * i + 1] += (masks[key].sum(-1) > 0).sum().double()
        counts[6] += 1
        if mb.get("old_entropy") is not None:
            demo = mb.get("is_demo")
            rollout = masks["all"] if demo is None else masks["all"] * (~demo.bool())[:, None]
            entropies.append(mb["old_entropy"].detach()[rollout > 0].reshape(-1))
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(counts, group=group)
    threshold = None
    if cfg.egspo_gate_mode in ("quantile", "soft") and not cfg.egspo_gate_one:
        if not entropies and group is None:
            raise ValueError(f"egspo_gate_mode={cfg.egspo_gate_mode!r} needs 'old_entropy' in "
                             "the micro-batches given to compute_normalizers")
        values = torch.cat(entropies) if entropies else torch.zeros(0, dtype=torch.float64,
                                                                    device=device)
        threshold = entropy_threshold(values, cfg.egspo_rho, group)
    c = counts.tolist()
    return Normalizers(rl_tokens=c[0], rl_sequences=c[1], sft_tokens=c[2], sft_sequences=c[3],
                       all_tokens=c[4], all_sequences=c[5], num_micro_batches=c[6],
                       max_response_length=float(cfg.max_response_length),
                       egspo_threshold=threshold)


def aggregate(values, mask, mode, tokens, sequences, norm: Normalizers, lengths=None):
    """Σ over this micro-batch divided by global denominators (SPEC §6), a scalar.

    token-mean: Σ M·v / tokens;  seq-mean-token-sum: Σ M·v / sequences;
    seq-mean-token-mean: Σ_i (Σ_t M·v / |o_i|) / sequences;
    seq-mean-token-sum-norm: Σ M·v / (L_max · sequences)  (Dr.GRPO);
    token-sum-norm: Σ M·v / (L_max · micro-batches)  (released LUFFY/HPT: each micro-batch's
    token sum / L_max, averaged over the micro-batches of the step).
    values, mask: [B, T]; lengths: [B] whole-row |o_i| (default mask.sum(-1)).
    A zero denominator gives 0 (the sum is then 0 too).
    """
    masked = values * mask  # [B, T]
    if mode == "token-mean":
        return masked.sum() / max(tokens, 1.0)
    if mode == "seq-mean-token-sum":
        return masked.sum() / max(sequences, 1.0)
    if mode == "seq-mean-token-mean":
        row_len = mask.sum(-1) if lengths is None else lengths.to(mask.dtype)
        return (masked.sum(-1) / row_len.clamp(min=1)).sum() / max(sequences, 1.0)
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / (norm.max_response_length * max(sequences, 1.0))
    if mode == "token-sum-norm":
        return masked.sum() / (norm.max_response_length * max(norm.num_micro_batches, 1.0))
    raise ValueError(f"unknown loss_agg_mode {mode!r}")

