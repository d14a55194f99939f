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


#: How the per-micro-batch presets map to the releases (verl ``dp_actor``-style actors). The
#: released actors add, per micro-batch, ``loss_mb / gradient_accumulation`` with
#: gradient_accumulation = ppo_mini_batch_size // ppo_micro_batch_size, which the released
#: scripts set to 1 (micro = mini = 64, use_dynamic_bsz=True): each GPU is meant to run one
#: micro-batch per optimizer step, and FSDP averages the gradients over GPUs. The project
#: averages loss_mb over *all* micro-batches of the step on all DP ranks (Normalizers.
#: num_micro_batches). Both are the same number when each DP rank runs one micro-batch per
#: optimizer step (--micro-batch-size ≥ the rank's rows of the step); with several micro-batches
#: per rank the project averages them where the release (whose dynamic batching splits a
#: mini-batch above ppo_max_token_len_per_gpu = 32768 tokens) sums them.



@register_preset
def luffy() -> LossConfig:
    """LUFFY as released (SPEC §4.1). Follows ElliottYan/LUFFY ``luffy/verl/verl/mix_src/``
    (the same code is TsinghuaC3I/Unify-Post-Training ``mix_core_alg.py``
    ``compute_token_on_off_policy_loss`` and ``mix_actor.py`` ``update_policy`` with
    offline_loss_type=off_policy, script ``exp_scripts/train_luffy.sh``): advantage over the mixed
    group (7 rollouts + 1 demonstration) without std (grpo_use_std=False), on-policy −A·r_t with
    no clip (loss_remove_clip=True), demonstrations −A·f(p_t), f(x) = x/(x+0.1), π_ref ≡ 1,
    per micro-batch Σ_tokens / L_max (loss_remove_token_mean=True; L_max 8192), entropy bonus
    0.001·masked_mean(H, response_mask) per micro-batch, no KL, lr 1e-6 (the caller's).
    Micro-batches: loss_mb averaged over the step's micro-batches (token-sum-norm and
    micro-batch-token-mean) = the release with one micro-batch per optimizer step per GPU
    (see the note above luffy()). Remaining differences: the release's L_max is the padded
    response width of the batch (= data.max_response_length); the paper divides the advantage
    by the group std (--loss-advantage-estimator grpo); the split-invariant Dr.GRPO reading
    Σ/(L_max·sequences) is --loss-loss-agg-mode seq-mean-token-sum-norm
    --loss-entropy-agg-mode token-mean."""
    return base().replace(on_policy_mask="none", advantage_estimator="dr_grpo", mixed_group=True,
                          demo_reference="one", demo_mask="none", demo_shaping="luffy",
                          demo_rl_coef=1.0, entropy_coef=0.001,
                          entropy_agg_mode="micro-batch-token-mean",
                          loss_agg_mode="token-sum-norm", max_response_length=8192)


@register_preset
def srft() -> LossConfig:
    """SRFT as released (SPEC §4.2). Follows TsinghuaC3I/Unify-Post-Training
    ``mix_actor.py`` ``update_policy`` (offline_loss_type=srft) and ``mix_core_alg.py``
    ``compute_token_on_off_policy_srft_loss``, script ``exp_scripts/train_srft.sh``. Per
    micro-batch: Σ_tokens / L_max (L_max 8192) of
      self-rollouts  −w_i·ℓ_t with w_i = 0.1·sg(exp(H̄_i)) if the rollout is correct (reward
                     == 1), else −1 (the release and the paper weigh by correctness, not by the
                     sign of Â; srft_type default: log-prob, no ratio, no clip);
      demonstrations −A·p/(p+0.1), π_ref ≡ 1, A = R − mean over the group augmented with the
                     demonstration (grpo_use_std=False);
    plus the SFT term token-mean over the micro-batch's demonstration tokens of
    −0.5·sg(exp(−H̄_i))·ℓ_t, minus 0.001·masked_mean(H) per micro-batch. H̄_i is the row's mean
    token entropy (old_entropy, else sg(entropy)). Micro-batches as luffy (note above luffy()).
    The paper's reading with std-normalised advantages and global token means: srft_paper."""
    return base().replace(on_policy_reference="pi_theta", on_policy_mask="none",
                          on_policy_advantage="srft_correct", mixed_group=True,
                          advantage_estimator="dr_grpo",
                          demo_reference="one", demo_mask="none", demo_shaping="luffy",
                          demo_rl_coef=1.0, sft_coef=1.0, sft_weighting="srft_entropy",
                          sft_normalization="micro_batch", loss_agg_mode="token-sum-norm",
                          max_response_length=8192, entropy_coef=0.001,
                          entropy_agg_mode="micro-batch-token-mean")


@register_preset
def srft_paper() -> LossConfig:
    """SRFT as written in the paper (arXiv 2506.19767): the srft terms with the GRPO advantage
    (R − mean)/(std + 1e-6) over the augmented group, token-mean of the RL terms over all RL
    tokens of the step, SFT token-mean over all demonstration tokens of the step, entropy
    0.001 token-mean over every token of the step; invariant to the micro-batch split."""
    return srft().replace(advantage_estimator="grpo", loss_agg_mode="token-mean",
                          sft_normalization="global", entropy_agg_mode="token-mean")


@register_preset
def chord_mu() -> LossConfig:
    """CHORD-μ (SPEC §4.3) as in Trinity-RFT 0.6.0 ``chord_policy_loss.py``
    ``MIXCHORDPolicyLossFn`` with ``ppo_policy_loss.py`` ``PPOPolicyLossFn``:
    (1 − μ)·L_GRPO + μ·L_SFT, each a token mean over its own tokens; GRPO clip 0.2 with the
    dual clip of A < 0 at c = 3 (Trinity always applies it: max(min(rA, clip(r)A), cA)),
    log-ratio clamped to [−20, 20] before exp; μ from mu_schedule_function at the step number
    (1-based: the trainer passes iteration + 1), warm-up 0, cosine decay over 200 steps from
    0.9 to 0.05; plain NLL (φ off). The expert share of the batch (0.2) is the data loader's
    job. Micro-batches: the project takes each token mean over the whole step (all
    micro-batches and DP ranks); Trinity takes it per micro-batch and rescales by the
    micro-batch's share of the GPU's usual/expert rows, i.e. with one micro-batch per step per
    GPU the GPU's token mean, then averages GPUs: equal to the project when every GPU holds
    the same number of tokens of each kind. The paper's plain PPO clip:
    --loss-on-policy-mask ppo_clip."""
    return base().replace(sft_coef=1.0, mu_schedule="chord", mu_peak=0.9, mu_valley=0.05,
                          mu_warmup_steps=0, mu_decay_steps=200, on_policy_mask="dual_clip",
                          clip_ratio_c=3.0, log_ratio_clamp=20.0)


@register_preset
def chord_phi() -> LossConfig:
    """CHORD-φ (SPEC §4.3) as in Trinity-RFT 0.6.0 (``MIXCHORDPolicyLossFn`` with
    enable_phi_function, ``SFTPhiLossFn``): chord_mu's GRPO term (dual clip c = 3, log-ratio
    clamp 20) and micro-batch handling, constant μ = 0.1, SFT tokens weighted by sg(p(1−p))."""
    return chord_mu().replace(sft_weighting="phi", mu_schedule="constant", mu_peak=0.1)


@register_preset
def hpt() -> LossConfig:
    """HPT as released (SPEC §4.4). Follows TsinghuaC3I/Unify-Post-Training ``mix_actor.py``
    ``MIXDataParallelPPOActor.update_policy`` (offline_loss_type=sft), ``mix_core_alg.py``
    ``compute_sft_pure_loss``, ``verl/trainer/ppo/core_algos.py`` ``compute_policy_loss``
    (loss_remove_token_mean, loss_remove_clip) and ``mix_trainer.py`` ``fit`` /
    ``select_on_off_ada_balance`` (unify_strategy=switch), script ``exp_scripts/train.sh``.
    Per micro-batch:
        loss_mb = Σ_rollout tokens(−A·r_t)/L_max + 1.0·mean_demo tokens(−ℓ_t) − 0.001·mean_all tokens(H)
    with A = R − mean_G (no std), no clip, L_max 8192; the SFT weight is 1.0 (0.3 for 1.5B).
    Rows: the gate (hybrid/) removes the rollouts of prompts with ≤ gate correct and keeps
    one demonstration row for them only (hybrid/gate_rows.py); no zero-weight rows remain.
    Micro-batches: loss_mb averaged over the step's micro-batches (note above luffy()): equal to
    the release with one micro-batch per optimizer step per GPU; the SFT mean's effective
    weight still depends on how demos are packed into micro-batches. Remaining differences:
    the release's L_max is the padded response width; it balances rows over GPUs by token
    count and cuts mini-batches by rows (the project keeps a prompt's rows on one DP rank and
    cuts mini-batches by whole prompts); it skips steps with grad-norm > 80 (offered as
    --skip-grad-norm-above 80). Soft mode also needs demo_rl_coef=1 (off-policy demo term with
    π_ref ≡ 1), which the paper describes and the release leaves unused. The paper writes
    Dr.GRPO/GRPO with clip: hpt_clean."""
    return base().replace(on_policy_mask="none", advantage_estimator="dr_grpo",
                          loss_agg_mode="token-sum-norm", max_response_length=8192,
                          sft_coef=1.0, sft_normalization="micro_batch", entropy_coef=0.001,
                          entropy_agg_mode="micro-batch-token-mean",
                          demo_reference="one", demo_mask="none")


@register_preset
def hpt_clean() -> LossConfig:
    """HPT as written in the paper, globally normalised: Dr.GRPO advantage with PPO clip 0.2,
    Σ / (L_max · sequences), SFT token-mean over every demo token of the global batch,
    entropy 0.001 token-mean over every token of the step; invariant to the micro-batch split."""
    return hpt().replace(on_policy_mask="ppo_clip", loss_agg_mode="seq-mean-token-sum-norm",
                         sft_normalization="global", entropy_agg_mode="token-mean")


@register_preset
def egspo() -> LossConfig:
    """EGSPO (SPEC §4.5; only the abstract is public, no released code to follow, parameters
    are ours): GRPO advantage, PPO clip 0.2 without dual clip (SPEC's min(rA, clip(r)A)),
    no log-ratio clamp, token weight w = g + (1−g)·sg(p(1−p)) with g = 1[H ≥ (1−ρ)-quantile], ρ = 0.2,
    token-mean; hybrid (1 − μ)·L_EG + μ·L_SFT-φ with μ = 0.1. Switches: egspo_attenuation=zero
    (a ≡ 0, hard 80/20 mask), egspo_gate_one (g ≡ 1, equals chord_phi with
    --loss-on-policy-mask ppo_clip --loss-log-ratio-clamp 0); gate modes
    quantile | absolute | soft. Stage 1 (SFT warm-up) is the sft preset."""
    return chord_phi().replace(egspo_gate_mode="quantile", egspo_rho=0.2,
                               egspo_attenuation="phi", on_policy_mask="ppo_clip",
                               log_ratio_clamp=0.0)
