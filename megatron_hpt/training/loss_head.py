"""The loss head inside megatron's ``forward_step``: vocab-parallel logits -> per-token
log-probs/entropy -> ``policy_loss`` with the step's global normalizers.

What moves: ``vocab_parallel_logprob_entropy`` all-reduces its per-token statistics over the TP
group (never the vocabulary); ``compute_normalizers`` all-reduces the step's counts once over the
DP x CP group. Each micro-batch's loss is already divided by the global denominators (SPEC §6).
"""
from __future__ import annotations

from typing import Dict, List

import torch
from megatron.core import parallel_state

from megatron_hpt.loss import LossConfig, compute_normalizers, policy_loss, vocab_parallel_logprob_entropy
from megatron_hpt.training.packing import to_rows

#: micro-batch keys that are per-row/per-token inputs of the estimator (besides the model inputs)
_ESTIMATOR_KEYS = ("is_demo", "on_policy_weight", "demo_rl_weight", "sft_weight")
#: metrics that are pre-divided by global normalizers: summed over micro-batches and DP ranks
ADDITIVE_METRICS = ("lm loss", "pg_loss", "sft_loss", "entropy_loss", "kl_loss")


class LossHead:
    """Binds a LossConfig to megatron's loss_func protocol."""

    def __init__(self, cfg: LossConfig, temperature: float = 1.0):
        self.cfg, self.temperature = cfg, temperature
        self.uses_entropy_grad = cfg.entropy_coef > 0
        self.additive_metrics = ADDITIVE_METRICS
        #: π_old is the current policy (one update per rollout batch, no pass needed before the
        #: step): old log-probs and π_old's entropy are the detached values of this forward;
        #: the micro-batch's ``old_logprobs`` (the engine's) only feed `rollout logprob gap`
        self.old_from_forward = False

    def attach_normalizers(self, micro_batches: List[Dict[str, torch.Tensor]]) -> None:
        """Once per optimizer step: global denominators over all micro-batches and DP x CP ranks."""
        counted = [dict({"response_mask": mb["loss_mask"]},
                        **{k: mb[k] for k in _ESTIMATOR_KEYS + ("old_entropy",) if k in mb})
                   for mb in micro_batches]
        norm = compute_normalizers(
            counted, self.cfg, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
        for mb in micro_batches:
            mb["normalizers"] = norm

    def __call__(self, logits: torch.Tensor, batch: Dict[str, torch.Tensor]):
        """logits [b, s, V/TP] (this rank's vocabulary shard) -> (loss, tokens, metrics)."""
        logprobs, entropy = vocab_parallel_logprob_entropy(
            logits, batch["labels"], temperature=self.temperature,
            group=parallel_state.get_tensor_model_parallel_group(), with_entropy=True)
        logprobs, entropy = to_rows(batch, logprobs), to_rows(batch, entropy)
        old_logprobs, gap = batch.get("old_logprobs"), {}
        if self.old_from_forward:
            old_logprobs = logprobs.detach() * batch["loss_mask"]
            if "old_logprobs" in batch:
                gap = {"rollout logprob gap": _gap(batch, old_logprobs)}
        extras = {k: batch[k] for k in _ESTIMATOR_KEYS + ("ref_logprobs", "old_entropy", "mu")
                  if k in batch}
        if self.uses_entropy_grad:
            extras["entropy"] = entropy
        else:
            extras.setdefault("old_entropy", entropy.detach())
        if self.old_from_forward:
            extras["old_entropy"] = entropy.detach()
        loss, metrics = policy_loss(logprobs, old_logprobs, batch.get("advantages"),
                                    batch["loss_mask"], self.cfg,
                                    normalizers=batch["normalizers"], **extras)
        metrics["lm loss"] = metrics.pop("loss")
        metrics.update(gap)
        return loss, batch["loss_mask"].sum().int(), metrics


def _gap(batch, logprobs: torch.Tensor) -> torch.Tensor:
    """Mean |engine log-prob − training log-prob| over the micro-batch's rollout tokens."""
    rollout = batch["loss_mask"] * (~batch["is_demo"].bool())[:, None].to(batch["loss_mask"].dtype) \
        if "is_demo" in batch else batch["loss_mask"]
    diff = (logprobs - batch["old_logprobs"]).abs() * rollout
    return diff.sum() / rollout.sum().clamp(min=1)
