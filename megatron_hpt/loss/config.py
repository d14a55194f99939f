"""LossConfig: every choice of the unified policy-gradient loss head (SPEC §2-§6), and the
preset registry (named functions derived from a base, duplicates refused)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from .advantages import ESTIMATORS
from .parts import ADVANTAGE_SOURCES, MASKS, REFERENCES, SFT_WEIGHTINGS, SHAPINGS

NORMALIZATIONS = ("global", "micro_batch")
AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
             "seq-mean-token-sum-norm", "token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
KL_MODES = ("loss", "reward")
MU_SCHEDULES = ("none", "constant", "chord")
GATE_MODES = ("off", "quantile", "absolute", "soft")
ATTENUATIONS = ("phi", "4phi", "constant", "zero")


@dataclass
class LossConfig:
    """One preset of the loss head; every field can be overridden from the command line."""

    # ---------------- estimator for on-policy rollout rows (SPEC §2) ----------------
    on_policy_reference: str = "pi_old"
    """reference denominator π_ref: pi_theta (sg π_θ), pi_old, one (π_ref ≡ 1),
    gspo_sequence (GSPO length-normalised sequence ratio), cispo (sg(π_θ / clip(r)))."""
    on_policy_mask: str = "ppo_clip"
    """stabilization mask: none, ppo_clip, dual_clip (c = clip_ratio_c for A < 0),
    gspo_sequence_clip."""
    on_policy_advantage: str = "estimated"
    """advantage: estimated (from compute_advantages), one (Â ≡ 1: SFT),
    srft_sign (SRFT self-rollouts: 0.1·sg(exp(H̄)) if Â > 0, −1 if Â < 0)."""
    on_policy_shaping: str = "none"
    """likelihood shaping f on on-policy rows: none or luffy (x / (x + shaping_gamma))."""
    rl_coef: float = 1.0
    """weight of the on-policy RL term (0 switches it off)."""

    # ---------------- estimator for demonstration rows ----------------
    demo_reference: str = "one"
    """reference denominator for demonstrations in the RL term (LUFFY/SRFT: one)."""
    demo_mask: str = "none"
    """stabilization mask for demonstrations in the RL term (LUFFY/SRFT: none)."""
    demo_advantage: str = "estimated"
    """advantage for demonstrations in the RL term (mixed-group advantage, or one)."""
    demo_shaping: str = "none"
    """likelihood shaping f on demonstration rows: none or luffy."""
    demo_rl_coef: float = 0.0
    """weight of demonstrations in the RL term (LUFFY/SRFT off-policy term; 0 = off)."""
    shaping_gamma: float = 0.1
    """γ of LUFFY's shaping f(x) = x / (x + γ)."""

    # ---------------- clipping ----------------
    clip_ratio_low: float = 0.2
    """ε_low: lower clip 1 − ε_low (PPO, CISPO, GSPO)."""
    clip_ratio_high: float = 0.2
    """ε_high: upper clip 1 + ε_high (DAPO clip-higher 0.28)."""
    clip_ratio_c: float = 3.0
    """dual-clip bound c (> 1) used by on/demo mask dual_clip for A < 0."""

    # ---------------- SFT term over demonstration rows ----------------
    sft_coef: float = 0.0
    """weight of the SFT term (token-mean NLL over demonstration tokens; 0 = off)."""
    sft_weighting: str = "none"
    """per-token SFT weight: none, phi (CHORD-φ sg(p(1−p))), p (sft_is sg(p)),
    srft_entropy (SRFT 0.5·sg(exp(−H̄)))."""
    sft_normalization: str = "global"
    """global (token-mean over every demo token of the step) or micro_batch (released
    HPT/LUFFY code: token-mean inside each micro-batch, divided by the step's micro-batches)."""

    # ---------------- CHORD / EGSPO mixing μ (SPEC §4.3) ----------------
    mu_schedule: str = "none"
    """none: terms are added; constant: (1−μ)·RL + μ·SFT with μ = mu_peak;
    chord: same with μ from mu_at_step (warm-up, cosine decay)."""
    mu_peak: float = 0.9
    """μ_peak (constant μ for mu_schedule=constant)."""
    mu_valley: float = 0.05
    """μ_valley reached at the end of the cosine decay."""
    mu_warmup_steps: int = 0
    """linear warm-up steps of μ from 0 to μ_peak."""
    mu_decay_steps: int = 200
    """cosine decay steps of μ from μ_peak to μ_valley."""

    # ---------------- aggregation (SPEC §6) ----------------
    loss_agg_mode: str = "token-mean"
    """RL, entropy and KL aggregation: token-mean, seq-mean-token-sum, seq-mean-token-mean,
    seq-mean-token-sum-norm (Σ / (L_max · sequences)), token-sum-norm (Σ / (L_max · micro-batches),
    the released LUFFY/HPT code)."""
    max_response_length: int = 8192
    """L_max: Dr.GRPO/LUFFY divisor and DAPO overlong limit."""

    # ---------------- advantages (SPEC §3) ----------------
    advantage_estimator: str = "grpo"
    """none, grpo, dr_grpo, rloo, reinforce, reinforce_pp, reinforce_pp_baseline."""
    advantage_eps: float = 1e-6
    """ε of the GRPO std division (R − mean) / (std + ε)."""
    mixed_group: bool = False
    """group statistics over on-policy ∪ demonstrations (LUFFY/SRFT); else demos get 0."""
    gamma: float = 1.0
    """REINFORCE++ discount of the token returns."""
    overlong_buffer_len: int = 0
    """DAPO L_cache: overlong reward shaping over the last L_cache tokens (0 = off)."""
    overlong_penalty_factor: float = 1.0
    """DAPO overlong shaping scale."""
    filter_groups: bool = False
    """DAPO dynamic sampling: the trainer drops groups whose accuracy is 0 or 1."""

    # ---------------- regularisers ----------------
    entropy_coef: float = 0.0
    """c_H of the entropy bonus L −= c_H · agg(H) over every row."""
    kl_coef: float = 0.0
    """β of the KL term to the frozen reference (0 = off)."""
    kl_estimator: str = "k3"
    """k1, k2 or k3 (SPEC §3)."""
    kl_mode: str = "loss"
    """loss (β·agg(k) added to the loss) or reward (−β·k added to token rewards)."""

    # ---------------- EGSPO entropy gate (SPEC §4.5) ----------------
    egspo_gate_mode: str = "off"
    """off, quantile (τ = (1−ρ)-quantile of batch entropies), absolute (τ = egspo_tau),
    soft (σ((H − τ_B) / κ))."""
    egspo_rho: float = 0.2
    """ρ: share of high-entropy tokens kept at full weight."""
    egspo_tau: float = 1.0
    """absolute entropy threshold τ for egspo_gate_mode=absolute."""
    egspo_kappa: float = 0.1
    """κ: temperature of the soft gate."""
    egspo_attenuation: str = "phi"
    """a for low-entropy tokens: phi sg(p(1−p)), 4phi sg(4p(1−p)), constant (λ), zero (a ≡ 0)."""
    egspo_lambda: float = 0.1
    """λ for egspo_attenuation=constant."""
    egspo_gate_one: bool = False
    """ablation g ≡ 1 (every token full weight: EGSPO becomes CHORD-φ)."""

    def __post_init__(self):
        choices = {
            "on_policy_reference": REFERENCES, "demo_reference": REFERENCES,
            "on_policy_mask": MASKS, "demo_mask": MASKS,
            "on_policy_advantage": ADVANTAGE_SOURCES, "demo_advantage": ADVANTAGE_SOURCES,
            "on_policy_shaping": SHAPINGS, "demo_shaping": SHAPINGS,
            "sft_weighting": SFT_WEIGHTINGS, "sft_normalization": NORMALIZATIONS,
            "mu_schedule": MU_SCHEDULES, "loss_agg_mode": AGG_MODES,
            "advantage_estimator": ESTIMATORS, "kl_estimator": KL_ESTIMATORS,
            "kl_mode": KL_MODES, "egspo_gate_mode": GATE_MODES,
            "egspo_attenuation": ATTENUATIONS,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"LossConfig.{name}={value!r} is not one of {list(allowed)}")
        checks = [
            ("clip_ratio_low", 0.0 <= self.clip_ratio_low <= 1.0, "in [0, 1]"),
            ("clip_ratio_high", self.clip_ratio_high >= 0.0, ">= 0"),
            ("clip_ratio_c", self.clip_ratio_c > 1.0, "> 1"),
            ("shaping_gamma", self.shaping_gamma > 0.0, "> 0"),
            ("rl_coef", self.rl_coef >= 0.0, ">= 0"),
            ("demo_rl_coef", self.demo_rl_coef >= 0.0, ">= 0"),
            ("sft_coef", self.sft_coef >= 0.0, ">= 0"),
            ("mu_peak", 0.0 <= self.mu_peak <= 1.0, "in [0, 1]"),
            ("mu_valley", 0.0 <= self.mu_valley <= 1.0, "in [0, 1]"),
            ("mu_warmup_steps", self.mu_warmup_steps >= 0, ">= 0"),
            ("mu_decay_steps", self.mu_decay_steps >= 0, ">= 0"),
            ("max_response_length", self.max_response_length > 0, "> 0"),
            ("advantage_eps", self.advantage_eps >= 0.0, ">= 0"),
            ("gamma", 0.0 <= self.gamma <= 1.0, "in [0, 1]"),
            ("overlong_buffer_len", 0 <= self.overlong_buffer_len < self.max_response_length,
             f"in [0, max_response_length={self.max_response_length})"),
            ("entropy_coef", self.entropy_coef >= 0.0, ">= 0"),
            ("kl_coef", self.kl_coef >= 0.0, ">= 0"),
            ("egspo_rho", 0.0 < self.egspo_rho <= 1.0, "in (0, 1]"),
            ("egspo_kappa", self.egspo_kappa > 0.0, "> 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"LossConfig.{name}={getattr(self, name)!r} must be {rule}")

    def replace(self, **overrides) -> "LossConfig":
        """A copy with ``overrides`` applied and validated; unknown names are refused."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown LossConfig field(s) {unknown}; valid: {sorted(known)}")
        return dataclasses.replace(self, **overrides)


_PRESETS: dict[str, Callable[[], LossConfig]] = {}


def register_preset(fn: Callable[[], LossConfig]) -> Callable[[], LossConfig]:
    """Register ``fn`` under its function name; a second preset of the same name is refused."""
    name = fn.__name__
    if name in _PRESETS:
        raise ValueError(f"loss preset {name!r} is already registered")
    _PRESETS[name] = fn
    return fn


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def preset(name: str) -> LossConfig:
    """The LossConfig of preset ``name`` (dashes and underscores are equivalent)."""
    key = name.replace("-", "_")
    if key not in _PRESETS:
        raise ValueError(f"unknown loss preset {name!r}; valid presets: {preset_names()}")
    return _PRESETS[key]()
