"""policy_loss: the token-level surrogate of SPEC §2 assembled from the four parts.

    loss = (1 − μ)·L_RL + μ·sft_coef·L_SFT − c_H·agg(H) + β·agg(KL)      (μ-mixing presets)
    loss =        L_RL +    sft_coef·L_SFT − c_H·agg(H) + β·agg(KL)      (otherwise)

L_RL = −(1/Z_RL) Σ M·w_row·w_gate·[m·Â·f(x) + (1 − m)·sg(Â·f(bound))], with the on-policy
estimator on rollout rows and the demonstration estimator on demo rows (selectable per data
source); L_SFT = −(1/Z_SFT) Σ M·w_row·w_tok·ℓ over demonstration rows.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .egspo import egspo_weight
from .kl import kl_penalty
from .normalization import aggregate, compute_normalizers, term_masks
from .parts import (LOG_FORM_REFERENCES, advantage, likelihood_gradient, reference_denominator,
                    shaping, sft_weight, stabilization_mask)
from .schedule import mu_at_step

_EXTRAS = ("is_demo", "entropy", "old_entropy", "ref_logprobs", "normalizers", "mu", "step",
           "on_policy_weight", "demo_rl_weight", "sft_weight", "response_lengths", "cp_group")


def _fp32(x):
    """Loss numerics are fp32 whatever the logits' dtype: half/bf16 inputs are upcast."""
    if x is None or not torch.is_tensor(x) or not x.is_floating_point() or x.dtype == torch.float64:
        return x
    return x.float()


def _cp_sum(x, group):
    """Sum of ``x`` (detached) over the context-parallel ranks (each holds a slice of the rows)."""
    x = x.detach()
    if group is not None and dist.get_world_size(group) > 1:
        x = x.clone()
        dist.all_reduce(x, group=group)
    return x


def _objective(logprobs, old_logprobs, adv_in, mask, cfg, source, seq_entropy, seq_log_ratio):
    """Per-token estimator objective of one data source ('on_policy' or 'demo'), [B, T]."""
    ref_kind = getattr(cfg, f"{source}_reference")
    log_ref = reference_denominator(logprobs, old_logprobs, ref_kind, mask,
                                    cfg.clip_ratio_low, cfg.clip_ratio_high, seq_log_ratio)
    adv = advantage(adv_in, getattr(cfg, f"{source}_advantage"), mask, seq_entropy)
    adv = adv.to(logprobs.dtype)
    f_kind = getattr(cfg, f"{source}_shaping")
    term = likelihood_gradient(logprobs, log_ref, f_kind, cfg.shaping_gamma,
                               log_form=ref_kind in LOG_FORM_REFERENCES)
    ratio = torch.exp(logprobs.detach() - log_ref)  # x in value
    keep, bound = stabilization_mask(ratio, adv, getattr(cfg, f"{source}_mask"),
                                     cfg.clip_ratio_low, cfg.clip_ratio_high, cfg.clip_ratio_c)
    dropped = (adv * shaping(bound, f_kind, cfg.shaping_gamma)).detach()
    return keep * adv * term + (1.0 - keep) * dropped, keep


def policy_loss(logprobs, old_logprobs=None, advantages=None, response_mask=None, cfg=None, *,
                batch=None, **extras):
    """Micro-batch loss already divided by the global denominators, and its metrics.

    Either plain tensors (below) or ``batch=`` a ``Batch`` (loss/batch.py) that supplies
    old_logprobs, advantages, response_mask and its per-row/per-token extras; keyword extras
    (normalizers, entropy, cp_group, ...) are added to the batch's.

    logprobs [B, T] (with gradient), old_logprobs [B, T] or None, advantages [B] or [B, T]
    (from compute_advantages; None for presets that use none), response_mask [B, T].
    extras: is_demo [B] bool; entropy [B, T] (differentiable, entropy bonus);
    old_entropy [B, T] (detached: EGSPO gate, SRFT weights; defaults to sg(entropy));
    ref_logprobs [B, T] (KL loss); normalizers (compute_normalizers over the whole step;
    default: this batch alone); mu (CHORD/EGSPO μ) or step (μ = mu_at_step(step));
    on_policy_weight, demo_rl_weight, sft_weight [B] (per-row branch coefficients, e.g. HPT);
    response_lengths [B] (valid tokens of each whole row, for seq-mean-token-mean when context
    parallelism gives this rank only a slice of each row; default: counted from response_mask);
    cp_group (context parallelism: this call holds a ``cp_shard`` of the rows; the per-row sums
    of GSPO's sequence ratio, the row entropy H̄ and the micro-batch SFT token count are summed
    over it, detached: every CP rank must call policy_loss for the same micro-batch).
    Numerics are fp32 (bf16/fp16 inputs are upcast; fp64 stays fp64).
    Returns (loss, metrics): metrics is a dict of detached scalar tensors.
    """
    if batch is not None:
        if old_logprobs is not None or advantages is not None or response_mask is not None:
            raise ValueError("policy_loss: pass either batch= or the plain tensors, not both")
        old_logprobs, advantages, response_mask = (batch.old_logprobs, batch.advantages,
                                                   batch.response_mask)
        extras = dict(batch.loss_extras(), **extras)
    if cfg is None or response_mask is None:
        raise ValueError("policy_loss needs cfg and response_mask (or batch=)")
    unknown = sorted(set(extras) - set(_EXTRAS))
    if unknown:
        raise ValueError(f"policy_loss: unknown extras {unknown}; valid: {list(_EXTRAS)}")
    cp_group = extras.get("cp_group")
    logprobs, old_logprobs, advantages = _fp32(logprobs), _fp32(old_logprobs), _fp32(advantages)
    extras.update({k: _fp32(extras[k]) for k in ("entropy", "old_entropy", "ref_logprobs")
                   if extras.get(k) is not None})
    b, _ = logprobs.shape
    dtype = logprobs.dtype
    is_demo = extras.get("is_demo")
    is_demo = torch.zeros(b, dtype=torch.bool, device=logprobs.device) if is_demo is None else is_demo.bool()
    masks = term_masks(response_mask.to(dtype), cfg, is_demo, extras.get("on_policy_weight"),
                       extras.get("demo_rl_weight"), extras.get("sft_weight"))
    m_all = masks["all"]
    valid = m_all > 0  # padding may hold anything (inf, nan): it never reaches the loss

    def clean(x):
        return None if x is None else torch.where(valid, x, torch.zeros_like(x))

    logprobs, old_logprobs = clean(logprobs), clean(old_logprobs)
    extras = dict(extras, **{k: clean(extras[k]) for k in ("entropy", "old_entropy", "ref_logprobs")
                             if extras.get(k) is not None})
    norm = extras.get("normalizers")
    if norm is None:
        batch = {"response_mask": response_mask, "is_demo": is_demo}
        for k in ("on_policy_weight", "demo_rl_weight", "sft_weight"):
            if extras.get(k) is not None:
                batch[k] = extras[k]
        ent_src = extras.get("old_entropy", extras.get("entropy"))
        if ent_src is not None:
            batch["old_entropy"] = ent_src
        norm = compute_normalizers([batch], cfg)
    entropy = extras.get("entropy")
    old_entropy = extras.get("old_entropy")
    old_entropy = entropy.detach() if old_entropy is None and entropy is not None else old_entropy
    # whole-row statistics (summed over CP ranks when the rows are sharded), all detached
    lengths = extras.get("response_lengths")
    lengths = _cp_sum(m_all.sum(-1), cp_group) if lengths is None else lengths.to(dtype)
    seq_entropy = None
    if old_entropy is not None:  # H̄_i, mean token entropy of each row, detached
        seq_entropy = _cp_sum((old_entropy * m_all).sum(-1), cp_group) / lengths.clamp(min=1)
    seq_log_ratio = None
    if "gspo_sequence" in (cfg.on_policy_reference, cfg.demo_reference) and old_logprobs is not None:
        seq_log_ratio = _cp_sum(((logprobs - old_logprobs) * m_all).sum(-1),
                                cp_group) / lengths.clamp(min=1)  # log s_i before the cap
    sft_mb_tokens = None
    if cfg.sft_normalization == "micro_batch" and cfg.sft_coef > 0:
        sft_mb_tokens = _cp_sum(masks["sft"].sum(), cp_group)

    zero = logprobs.sum() * 0.0
    metrics = {}
    # ---- RL term: each data source with its own estimator ----
    rl = zero
    if masks["rl"].sum() > 0:
        demo_rows = is_demo[:, None]
        obj_on, keep_on = _objective(logprobs, old_logprobs, advantages, m_all, cfg,
                                               "on_policy", seq_entropy, seq_log_ratio)
        weight = torch.ones_like(obj_on)
        if cfg.egspo_gate_mode != "off" or cfg.egspo_gate_one:
            if old_entropy is None:
                raise ValueError("EGSPO gate needs the old_entropy (or entropy) extra")
            weight, g = egspo_weight(logprobs, old_entropy, cfg, norm.egspo_threshold)
            on_tok = masks["rl"] * (~demo_rows).to(dtype)
            metrics["egspo_gate_fraction"] = (g * on_tok).sum() / on_tok.sum().clamp(min=1)
            weight = torch.where(demo_rows, torch.ones_like(weight), weight)
        if bool(is_demo.any()) and cfg.demo_rl_coef > 0:
            obj_demo, keep_demo = _objective(logprobs, old_logprobs, advantages, m_all, cfg,
                                                "demo", seq_entropy, seq_log_ratio)
            obj = torch.where(demo_rows, obj_demo, obj_on)
            keep = torch.where(demo_rows, keep_demo, keep_on)
        else:
            obj, keep = obj_on, keep_on
        values = -obj * weight * masks["rl_weight"][:, None]
        rl = aggregate(values, masks["rl"], cfg.loss_agg_mode, norm.rl_tokens, norm.rl_sequences, norm,
                       lengths)
        rl_tok = masks["rl"]
        metrics["clip_fraction"] = ((1.0 - keep) * rl_tok).sum() / rl_tok.sum().clamp(min=1)
        on_tok = (m_all * (~demo_rows).to(dtype)) > 0
        if old_logprobs is not None and bool(on_tok.any()):
            r = torch.exp(logprobs.detach() - old_logprobs.detach())[on_tok]
            metrics.update(ratio_mean=r.mean(), ratio_min=r.min(), ratio_max=r.max(),
                           ppo_kl=(old_logprobs.detach() - logprobs.detach())[on_tok].mean())
    # ---- SFT term over demonstration rows ----
    sft = zero
    if masks["sft"].sum() > 0:
        w_tok = sft_weight(logprobs, cfg.sft_weighting, seq_entropy)
        values = -(w_tok * logprobs) * (masks["sft_weight"] / cfg.sft_coef)[:, None]
        if cfg.sft_normalization == "global":
            sft = (values * masks["sft"]).sum() / max(norm.sft_tokens, 1.0)
        else:  # released HPT: token-mean inside this micro-batch, averaged over micro-batches
            sft = ((values * masks["sft"]).sum() / sft_mb_tokens.clamp(min=1)
                   / max(norm.num_micro_batches, 1.0))
    # ---- mixing, entropy bonus, KL ----
    if cfg.mu_schedule == "none":
        mu = None
        loss = rl + cfg.sft_coef * sft
    else:
        mu = extras.get("mu")
        if mu is None:
            if extras.get("step") is None:
                raise ValueError(f"mu_schedule={cfg.mu_schedule!r} needs the mu or step extra")
            mu = mu_at_step(int(extras["step"]), cfg)
        loss = (1.0 - mu) * rl + mu * cfg.sft_coef * sft
    ent = zero
    if entropy is not None:
        ent = aggregate(entropy, m_all, cfg.loss_agg_mode, norm.all_tokens, norm.all_sequences, norm,
                        lengths)
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * ent
        metrics["entropy_mean"] = (entropy.detach() * m_all).sum() / m_all.sum().clamp(min=1)
    elif cfg.entropy_coef > 0:
        raise ValueError(f"entropy_coef={cfg.entropy_coef} needs the entropy extra")
    kl = zero
    if cfg.kl_coef > 0 and cfg.kl_mode == "loss":
        if extras.get("ref_logprobs") is None:
            raise ValueError("kl_coef > 0 with kl_mode='loss' needs the ref_logprobs extra")
        k = kl_penalty(logprobs, extras["ref_logprobs"], cfg.kl_estimator)
        kl = aggregate(k, m_all, cfg.loss_agg_mode, norm.all_tokens, norm.all_sequences, norm,
                       lengths)
        loss = loss + cfg.kl_coef * kl
        metrics["kl_mean"] = (k.detach() * m_all).sum() / m_all.sum().clamp(min=1)
    metrics.update(pg_loss=rl, sft_loss=sft, entropy_loss=ent, kl_loss=kl, loss=loss,
                   demo_token_share=(m_all * is_demo[:, None].to(dtype)).sum() / m_all.sum().clamp(min=1))
    if mu is not None:
        metrics["mu"] = torch.tensor(float(mu), device=loss.device)
    return loss, {k: v.detach() for k, v in metrics.items()}
