"""Named presets (SPEC §3-§4), each a function derived from ``base()``.

``preset(name)`` returns a fresh LossConfig; users override fields from the command line.
Paper-versus-code differences from SPEC are stated under each preset.
"""
from __future__ import annotations

from .config import LossConfig, register_preset


def base() -> LossConfig:
    """PPO-style on-policy estimator (π_ref = π_old, symmetric clip 0.2), GRPO advantage,
    token-mean; no demonstrations, no SFT, no entropy bonus, no KL."""
    return LossConfig()


@register_preset
def sft() -> LossConfig:
    """SFT (Table 1): π_ref = sg(π_θ), Â ≡ 1, no mask, token-mean NLL over every row.
    Demonstration rows use the same estimator, so is_demo may be given or not."""
    return base().replace(on_policy_reference="pi_theta", on_policy_mask="none",
                          on_policy_advantage="one", demo_reference="pi_theta",
                          demo_advantage="one", demo_rl_coef=1.0, advantage_estimator="none")


@register_preset
def reinforce() -> LossConfig:
    """REINFORCE (Table 1): π_ref = sg(π_θ), Â = R, no mask, token-mean of −R·ℓ."""
    return base().replace(on_policy_reference="pi_theta", on_policy_mask="none",
                          advantage_estimator="reinforce")


@register_preset
def grpo() -> LossConfig:
    """GRPO (SPEC §3): (R − mean_G)/(std_G + 1e-6), clip ε = 0.2, seq-mean-token-mean as in
    the paper. The optional KL loss β·k3 is off (set kl_coef, e.g. 0.04, to enable it)."""
    return base().replace(loss_agg_mode="seq-mean-token-mean")


@register_preset
def dr_grpo() -> LossConfig:
    """Dr.GRPO (SPEC §3): R − mean_G, Σ / (L_max · sequences) (no 1/|o_i|), clip kept, no KL."""
    return base().replace(advantage_estimator="dr_grpo", loss_agg_mode="seq-mean-token-sum-norm")


@register_preset
def dapo() -> LossConfig:
    """DAPO (SPEC §3): clip-higher ε_low 0.2 / ε_high 0.28, token-mean over the batch,
    overlong shaping L_max 20480 / L_cache 4096, dynamic sampling (filter_groups: the trainer
    drops groups with accuracy 0 or 1 via ``group_filter`` and oversamples), no KL."""
    return base().replace(clip_ratio_high=0.28, max_response_length=20480,
                          overlong_buffer_len=4096, filter_groups=True)


@register_preset
def gspo() -> LossConfig:
    """GSPO (SPEC §3): length-normalised sequence ratio s_i (log clamped at 10) as reference
    denominator, sequence clip 1 − 3e-4 / 1 + 4e-4, GRPO advantage, mean over sequences of the
    token mean (the token form s_{i,t} = sg(s_i)·exp(ℓ_t − sg(ℓ_t)))."""
    return base().replace(on_policy_reference="gspo_sequence", on_policy_mask="gspo_sequence_clip",
                          clip_ratio_low=3e-4, clip_ratio_high=4e-4,
                          loss_agg_mode="seq-mean-token-mean")


@register_preset
def cispo() -> LossConfig:
    """CISPO (SPEC §3): −(1/Σ|o|) ΣΣ sg(clip(r, 1 − ε_low, 1 + ε_high))·A·ℓ; every token
    keeps its gradient. MiniMax-M1 sets no effective lower bound (ε_low = 1 here) and tunes
    ε_high (0.28 here, our choice)."""
    return base().replace(on_policy_reference="cispo", on_policy_mask="none",
                          clip_ratio_low=1.0, clip_ratio_high=0.28)


@register_preset
def rloo() -> LossConfig:
    """RLOO (SPEC §3): A_i = R_i − mean_{j≠i} R_j = G/(G−1)(R_i − mean_G), PPO clip, token-mean."""
    return base().replace(advantage_estimator="rloo")


@register_preset
def reinforce_pp() -> LossConfig:
    """REINFORCE++ (SPEC §3): discounted token returns whitened over the global batch, PPO
    clip, token-mean. The KL penalty in the reward is off by default (no reference model);
    set kl_coef > 0 with kl_mode=reward (k1 in the paper) and pass ref_logprobs."""
    return base().replace(advantage_estimator="reinforce_pp", kl_estimator="k1", kl_mode="reward")


@register_preset
def luffy() -> LossConfig:
    """LUFFY (SPEC §4.1): advantage over the mixed group (7 rollouts + 1 demonstration) without
    std (released script; the paper divides by std: set advantage_estimator=grpo), on-policy
    −A·r_t with no clip (released: no clip at all), demonstrations −A·f(p_t) with
    f(x) = x/(x+0.1) and π_ref ≡ 1, entropy 0.001, no KL, L_max 8192.
    Aggregation: Σ / (L_max · sequences). The released code divides each micro-batch's token
    sum by L_max and averages over micro-batches, i.e. our value × (sequences per micro-batch);
    loss_agg_mode=token-sum-norm reproduces that exactly (it is then split-dependent)."""
    return base().replace(on_policy_mask="none", advantage_estimator="dr_grpo", mixed_group=True,
                          demo_reference="one", demo_mask="none", demo_shaping="luffy",
                          demo_rl_coef=1.0, entropy_coef=0.001,
                          loss_agg_mode="seq-mean-token-sum-norm", max_response_length=8192)


@register_preset
def srft() -> LossConfig:
    """SRFT (SPEC §4.2): L = L_SFT^demo + L_RL^demo + L_RL^self; GRPO advantage over the group
    augmented with demonstrations. Demo SFT weight 0.5·sg(exp(−H̄)); demo RL with π_ref ≡ 1, no
    clip, shaping p/(p+0.1); self-rollouts −0.1·sg(exp(H̄))·ℓ for positive and +ℓ for negative
    samples (the sign of Â decides, our reading), token-mean. H̄ is the row's mean token entropy
    (pass old_entropy or entropy)."""
    return base().replace(on_policy_reference="pi_theta", on_policy_mask="none",
                          on_policy_advantage="srft_sign", mixed_group=True,
                          demo_reference="one", demo_mask="none", demo_shaping="luffy",
                          demo_rl_coef=1.0, sft_coef=1.0, sft_weighting="srft_entropy")


@register_preset
def chord_mu() -> LossConfig:
    """CHORD-μ (SPEC §4.3): (1 − μ)·L_GRPO + μ·L_SFT, each a token mean over its own tokens;
    μ warm-up 0, cosine decay over 200 steps from 0.9 to 0.05; plain NLL (φ off). The expert
    share of the batch (0.2) is the data loader's job."""
    return base().replace(sft_coef=1.0, mu_schedule="chord", mu_peak=0.9, mu_valley=0.05,
                          mu_warmup_steps=0, mu_decay_steps=200)


@register_preset
def chord_phi() -> LossConfig:
    """CHORD-φ (SPEC §4.3): constant μ = 0.1, SFT tokens weighted by sg(p(1−p))."""
    return base().replace(sft_coef=1.0, sft_weighting="phi", mu_schedule="constant", mu_peak=0.1)


@register_preset
def hpt() -> LossConfig:
    """HPT as released (SPEC §4.4): A = R − mean_G (no std), no clip, per micro-batch
    Σ_tokens(−A·r_t)/L_max averaged over the step's micro-batches (token-sum-norm, L_max 8192),
    SFT branch = token-mean NLL over the demo tokens *of each micro-batch*, weight 1.0 (0.3 for
    1.5B), the micro-batch means averaged over the micro-batches like the RL term — so the SFT
    term's effective weight depends on how demos are packed into micro-batches. Entropy 0.001,
    no KL. Switch mode (gate from hybrid/) passes on_policy_weight / sft_weight per row; soft
    mode also needs demo_rl_coef=1 (off-policy demo term with π_ref ≡ 1), which the paper
    describes and the release leaves unused. The paper writes Dr.GRPO/GRPO with clip: hpt_clean."""
    return base().replace(on_policy_mask="none", advantage_estimator="dr_grpo",
                          loss_agg_mode="token-sum-norm", max_response_length=8192,
                          sft_coef=1.0, sft_normalization="micro_batch", entropy_coef=0.001,
                          demo_reference="one", demo_mask="none")


@register_preset
def hpt_clean() -> LossConfig:
    """HPT as written in the paper, globally normalised: Dr.GRPO advantage with PPO clip 0.2,
    Σ / (L_max · sequences), SFT token-mean over every demo token of the global batch,
    entropy 0.001; invariant to the micro-batch split."""
    return hpt().replace(on_policy_mask="ppo_clip", loss_agg_mode="seq-mean-token-sum-norm",
                         sft_normalization="global")


@register_preset
def egspo() -> LossConfig:
    """EGSPO (SPEC §4.5; only the abstract is public, parameters are ours): GRPO advantage,
    clip 0.2, token weight w = g + (1−g)·sg(p(1−p)) with g = 1[H ≥ (1−ρ)-quantile], ρ = 0.2,
    token-mean; hybrid (1 − μ)·L_EG + μ·L_SFT-φ with μ = 0.1. Switches: egspo_attenuation=zero
    (a ≡ 0, hard 80/20 mask), egspo_gate_one (g ≡ 1, equals chord_phi); gate modes
    quantile | absolute | soft. Stage 1 (SFT warm-up) is the sft preset."""
    return chord_phi().replace(egspo_gate_mode="quantile", egspo_rho=0.2,
                               egspo_attenuation="phi")
