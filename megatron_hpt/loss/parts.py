"""The four interchangeable parts of the Unified Policy Gradient Estimator (SPEC §2).

    grad = E_{τ~π_ref}[ 1_stable(τ) · (1/π_ref(τ)) · Â(τ) · ∇π_θ(τ) ]

realised per token by the surrogate (SPEC §2)

    L = −(1/Z) Σ_i Σ_t M_{i,t} · m_{i,t} · Â_{i,t} · f( exp(ℓ_t − sg(log π_ref,t)) ).

All functions are pure tensor functions on ``[B, T]`` (rows × response positions).
"""
from __future__ import annotations

import torch

LOG_RATIO_CAP = 10.0  # GSPO: clamp log s_i at 10 (SPEC §3)

# The registry of the four parts (and the SFT weighting): the names each function below accepts.
# LossConfig's choices are these tuples (loss/config.py); a new kind is a branch in its function
# plus its name here.
REFERENCES = ("pi_theta", "pi_old", "one", "gspo_sequence", "cispo")  # reference_denominator
MASKS = ("none", "ppo_clip", "dual_clip", "gspo_sequence_clip")  # stabilization_mask
ADVANTAGE_SOURCES = ("estimated", "one", "srft_sign")  # advantage
SHAPINGS = ("none", "luffy")  # shaping, likelihood_gradient
SFT_WEIGHTINGS = ("none", "phi", "p", "srft_entropy")  # sft_weight


def reference_denominator(logprobs, old_logprobs, kind, response_mask,
                          clip_ratio_low=0.2, clip_ratio_high=0.2, seq_log_ratio=None):
    """log π_ref per token, detached (SPEC §2 "reference denominator", Table 1).

    pi_theta: sg(ℓ)  (SFT, REINFORCE: factor 1, gradient ∇ℓ);
    pi_old: ℓ^old  (PPO, GRPO: factor r_t);
    one: 0  (π_ref ≡ 1, off-policy demonstrations: factor p_t);
    gspo_sequence: sg(ℓ) − log s_i, log s_i = min(10, (1/|o_i|) Σ_t (ℓ_t − ℓ^old_t))
      (GSPO token form s_{i,t} = sg(s_i)·exp(ℓ_t − sg(ℓ_t)), SPEC §3);
    cispo: sg(ℓ) − log clip(r_t, 1−ε_low, 1+ε_high)  (CISPO: factor sg(clip(r))·∇ℓ, SPEC §3).
    Shapes: logprobs, old_logprobs, response_mask [B, T] → [B, T]. seq_log_ratio [B]: GSPO's
    uncapped log s_i over the whole row when this call holds a context-parallel slice of it.
    """
    lp = logprobs.detach()  # [B, T]
    if kind == "pi_theta":
        return lp
    if kind == "one":
        return torch.zeros_like(lp)
    if old_logprobs is None:
        raise ValueError(f"reference_denominator {kind!r} needs old_logprobs")
    old = old_logprobs.detach()
    if kind == "pi_old":
        return old
    if kind == "gspo_sequence":
        mask = response_mask.to(lp.dtype)
        log_s = ((lp - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1) \
            if seq_log_ratio is None else seq_log_ratio.detach()  # [B]
        return lp - log_s.clamp(max=LOG_RATIO_CAP)[:, None]
    if kind == "cispo":
        ratio = torch.exp(lp - old).clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
        return lp - torch.log(ratio)
    raise ValueError(f"unknown reference denominator {kind!r}")


def stabilization_mask(ratio, advantages, kind, clip_ratio_low=0.2, clip_ratio_high=0.2,
                       clip_ratio_c=3.0):
    """(keep, bound): 0/1 mask m_{i,t} and the ratio value that dropped tokens keep, no gradient.

    SPEC §2: PPO clipping ≡ m = 1 − 1[(A>0 ∧ x>1+ε_high) ∨ (A<0 ∧ x<1−ε_low)]; dropped
    tokens contribute the constant A·f(bound) with bound = clip(x, 1−ε_low, 1+ε_high), so the
    value and gradient equal min(xA, clip(x)A). dual_clip also drops A<0 ∧ x>c (bound c):
    max(min(xA, clip(x)A), cA). gspo_sequence_clip is the same rule on GSPO's sequence ratio
    s_i (x is s_i in value when the reference is gspo_sequence). none keeps every token.
    ratio (x = π_θ/π_ref in value), advantages: [B, T] → keep, bound: [B, T].
    """
    x = ratio.detach()
    a = advantages.detach()
    if kind == "none":
        return torch.ones_like(x), x
    if kind not in ("ppo_clip", "dual_clip", "gspo_sequence_clip"):
        raise ValueError(f"unknown stabilization mask {kind!r}")
    drop = ((a > 0) & (x > 1.0 + clip_ratio_high)) | ((a < 0) & (x < 1.0 - clip_ratio_low))
    bound = x.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    if kind == "dual_clip":
        dual = (a < 0) & (x > clip_ratio_c)
        drop = drop | dual
        bound = torch.where(dual, torch.full_like(x, clip_ratio_c), bound)
    return (~drop).to(x.dtype), bound


def advantage(advantages, kind, response_mask, sequence_entropy=None):
    """Â_{i,t} (SPEC §2 "advantage"), detached, [B, T].

    estimated: the advantages from compute_advantages, [B] broadcast over tokens or [B, T];
    one: Â ≡ 1 (SFT row of Table 1);
    srft_sign: SRFT self-rollouts (SPEC §4.2): 0.1·sg(exp(H̄_i)) for positive samples (Â > 0),
      −1 for negative samples (Â < 0), 0 otherwise; H̄_i = mean token entropy of row i.
    """
    shape = response_mask.shape
    if kind == "one":
        return torch.ones(shape, dtype=torch.float64 if advantages is None else advantages.dtype,
                          device=response_mask.device)
    if advantages is None:
        raise ValueError(f"advantage {kind!r} needs advantages")
    adv = advantages.detach()
    adv = adv[:, None].expand(shape) if adv.dim() == 1 else adv  # [B, T]
    if kind == "estimated":
        return adv
    if kind == "srft_sign":
        if sequence_entropy is None:
            raise ValueError("advantage 'srft_sign' needs the entropy extra")
        w_rl = 0.1 * torch.exp(sequence_entropy.detach())[:, None].to(adv.dtype)  # [B, 1]
        return torch.where(adv > 0, w_rl.expand(shape),
                           torch.where(adv < 0, -torch.ones_like(adv), torch.zeros_like(adv)))
    raise ValueError(f"unknown advantage {kind!r}")


def sft_weight(logprobs, kind, sequence_entropy=None):
    """Per-token SFT weight (the SFT term's Â, detached), [B, T] (SPEC §4.2, §4.3).

    none: 1 (plain NLL); phi: sg(p(1−p)) (CHORD-φ); p: sg(p) (sft_is);
    srft_entropy: 0.5·sg(exp(−H̄_i)) (SRFT demo SFT weight).
    """
    lp = logprobs.detach()
    if kind == "none":
        return torch.ones_like(lp)
    p = torch.exp(lp)
    if kind == "phi":
        return p * (1.0 - p)
    if kind == "p":
        return p
    if kind == "srft_entropy":
        if sequence_entropy is None:
            raise ValueError("sft_weighting 'srft_entropy' needs the entropy extra")
        return (0.5 * torch.exp(-sequence_entropy.detach()))[:, None].to(lp.dtype).expand_as(lp)
    raise ValueError(f"unknown sft weighting {kind!r}")


def shaping(x, kind, gamma=0.1):
    """Likelihood shaping f (SPEC §2, §4.1): none f(x) = x; luffy f(x) = x / (x + γ)."""
    if kind == "none":
        return x
    if kind == "luffy":
        return x / (x + gamma)
    raise ValueError(f"unknown shaping {kind!r}")


def likelihood_gradient(logprobs, log_reference, kind, gamma=0.1, log_form=False):
    """f(exp(ℓ − sg(log π_ref))) whose gradient is f'(x)·x·∇ℓ (SPEC §2 "likelihood gradient").

    LUFFY's f(x) = x/(x+γ) gives γx/(x+γ)²·∇ℓ (SPEC §4.1). With ``log_form`` (references
    built from sg(π_θ): pi_theta, cispo) the term is sg(f'(x)·x)·ℓ instead: same gradient,
    and its value is the NLL-type objective of SPEC (SFT −ℓ, CISPO sg(clip r)·A·ℓ, SRFT w·ℓ)
    rather than the constant f(1). logprobs, log_reference: [B, T] → [B, T].
    """
    if kind not in ("none", "luffy"):
        raise ValueError(f"unknown shaping {kind!r}")
    x = torch.exp(logprobs - log_reference.detach())  # [B, T], x = π_θ / π_ref
    if not log_form:
        return shaping(x, kind, gamma)
    xd = x.detach()
    slope = xd if kind == "none" else gamma * xd / (xd + gamma) ** 2  # f'(x)·x
    return slope * logprobs


LOG_FORM_REFERENCES = ("pi_theta", "cispo")  # references built from sg(π_θ)
