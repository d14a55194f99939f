"""Where π_old's log-probs (and entropy) come from for one rollout batch, so that no forward pass
runs whose result the training forward already gives.

    pass     a forward-only pass of the training model before the first update
             (``logprobs.recompute_old_logprobs``): needed when π_old differs from the policy of some
             update (several updates per rollout batch), or when something reads π_old before
             the step's forward: KL in the reward (advantages read old log-probs) and EGSPO's
             quantile / soft gate (the normalizers' τ_B reads π_old's entropies of the whole
             batch). With vLLM's log-probs kept (``--rollout-logprobs engine``) the pass only
             supplies the entropies.
    forward  one update per rollout batch and nothing reads π_old early: π_old *is* the policy
             of the training forward, so old log-probs and π_old's entropy are its detached
             values (``LossHead.old_from_forward``); the pass would compute the same numbers
             (dropout is 0, eval and train forwards agree). Both engines and both
             ``--rollout-logprobs`` settings, except vLLM's own log-probs, land here.
    engine   vLLM's sampled-token log-probs are kept as π_old (``--rollout-logprobs engine``
             with ``--rollout-engine vllm``): kernels and precision differ from training, and
             that difference is what the user asked for.
"""
from __future__ import annotations


def needs_entropy_early(loss_cfg) -> bool:
    """EGSPO's batch-quantile / soft gate reads π_old's entropies in the normalizers."""
    return loss_cfg.egspo_gate_mode in ("quantile", "soft") and not loss_cfg.egspo_gate_one


def old_logprob_source(cfg, updates: int, has_reference: bool) -> str:
    """``pass``, ``forward`` or ``engine`` (module docstring)."""
    ro = cfg.rollout
    if updates > 1:
        return "pass"
    if ro.engine == "vllm" and ro.old_logprobs == "engine":
        return "engine"
    if cfg.loss.kl_mode == "reward" and has_reference:
        return "pass"
    if needs_entropy_early(cfg.loss):
        return "pass"
    return "forward"


def needs_pass(source: str, loss_cfg) -> bool:
    """Whether the forward-only pass runs: for ``pass``, and for ``engine`` when EGSPO's gate
    needs π_old's entropies early (the engine's log-probs are kept, only entropies taken)."""
    return source == "pass" or (source == "engine" and needs_entropy_early(loss_cfg))
