"""The unified policy-gradient loss head (SPEC §2-§6).

Public API (DESIGN §3): ``preset(name) -> LossConfig``,
``compute_advantages(rewards, group_index, cfg, **extras)``,
``policy_loss(logprobs, old_logprobs, advantages, response_mask, cfg, **extras)`` (or
``policy_loss(logprobs, batch=Batch, cfg=cfg, ...)``), ``Batch`` (one typed micro-batch, with
``to``/``select``/``split``/``cp_shard``),
plus ``compute_normalizers``/``Normalizers`` (SPEC §6), ``mu_at_step`` (CHORD μ) and
``vocab_parallel_logprob_entropy`` (per-token log-probs and entropy from vocab-parallel logits).
"""
from . import presets as _presets  # noqa: F401  (registers the presets)
from .advantages import compute_advantages, group_filter, overlong_reward
from .batch import Batch, cp_shard, cp_unshard
from .config import LossConfig, preset, preset_names, register_preset
from .kl import kl_penalty
from .logprob import vocab_parallel_logprob_entropy
from .normalization import Normalizers, compute_normalizers
from .parts import advantage, likelihood_gradient, reference_denominator, stabilization_mask
from .policy_loss import policy_loss
from .schedule import mu_at_step

__all__ = [
    "Batch", "LossConfig", "Normalizers", "advantage", "compute_advantages", "compute_normalizers",
    "group_filter", "kl_penalty", "likelihood_gradient", "mu_at_step", "overlong_reward",
    "policy_loss", "preset", "preset_names", "reference_denominator", "register_preset",
    "stabilization_mask", "vocab_parallel_logprob_entropy", "cp_shard", "cp_unshard",
]
