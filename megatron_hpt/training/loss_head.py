"""The loss head inside megatron's ``forward_step``: vocab-parallel logits -> per-token
log-probs/entropy -> ``policy_loss`` with the step's global normalizers.

What moves: ``vocab_parallel_logprob_entropy`` all-reduces its per-token statistics over the TP
group (never the vocabulary); ``compute_normalizers`` all-reduces the step's counts once over the
DP group (every CP rank counts the same whole rows). Each micro-batch's loss is already divided
by the global denominators (SPEC §6).
"""
from __future__ import annotations

from typing import List

import torch
from megatron.core import parallel_state

from megatron_hpt.loss import LossConfig, compute_normalizers, policy_loss, vocab_parallel_logprob_entropy
from megatron_hpt.loss.batch import Batch
from megatron_hpt.training.packing import to_rows

#: metrics that are pre-divided by global normalizers: summed over micro-batches and DP ranks
ADDITIVE_METRICS = ("lm loss", "pg_loss", "sft_loss", "entropy_loss", "kl_loss")


def context_parallel_group():
    """megatron's CP group when CP > 1, else None."""
    if parallel_state.get_context_parallel_world_size() > 1:
        return parallel_state.get_context_parallel_group()
    return None


class LossHead:
    """Binds a LossConfig to megatron's loss_func protocol. The step's normalizers travel beside
    the micro-batches: ``attach_normalizers`` stores them here once per optimizer step."""

    def __init__(self, cfg: LossConfig, temperature: float = 1.0):
        self.cfg, self.temperature = cfg, temperature
        self.uses_entropy_grad = cfg.entropy_coef > 0
        self.additive_metrics = ADDITIVE_METRICS
        #: π_old is the current policy (one update per rollout batch, no pass needed before the
        #: step): old log-probs and π_old's entropy are the detached values of this forward;
        #: the micro-batch's ``old_logprobs`` (the engine's) only feed `rollout logprob gap`
        self.old_from_forward = False
        self.normalizers = None

    def attach_normalizers(self, micro_batches: List[Batch]) -> None:
        """Once per optimizer step: global denominators over all micro-batches and DP ranks.
        The micro-batches hold whole rows (CP shards are cut in the forward step), so the counts
        are summed over the DP group only: the CP ranks of a DP rank count the same rows."""
        self.normalizers = compute_normalizers(
            micro_batches, self.cfg,
            group=parallel_state.get_data_parallel_group(with_context_parallel=False))

    def __call__(self, logits: torch.Tensor, batch: Batch):
        """logits [b, s, V/TP] (this rank's vocabulary shard; with CP this rank's token shard,
        and ``batch`` its ``cp_shard``) -> (loss, tokens, metrics); loss numerics in fp32."""
        if self.normalizers is None:
            raise RuntimeError("LossHead: attach_normalizers(micro_batches) must run before the step")
        logprobs, entropy = vocab_parallel_logprob_entropy(
            logits, batch.labels, temperature=self.temperature,
            group=parallel_state.get_tensor_model_parallel_group(), with_entropy=True)
        logprobs, entropy = to_rows(batch, logprobs), to_rows(batch, entropy)
        gap = {}
        if self.old_from_forward:  # π_old is this forward's policy (training/rl/old_policy.py)
            if batch.old_logprobs is not None:
                gap = {"rollout logprob gap": _gap(batch, logprobs.detach())}
            batch = batch.replace(old_logprobs=logprobs.detach() * batch.response_mask,
                                  old_entropy=entropy.detach())
        extras = {}
        if self.uses_entropy_grad:
            extras["entropy"] = entropy
        elif batch.old_entropy is None:
            extras["old_entropy"] = entropy.detach()
        loss, metrics = policy_loss(logprobs, batch=batch, cfg=self.cfg,
                                    normalizers=self.normalizers,
                                    cp_group=context_parallel_group(), **extras)
        metrics["lm loss"] = metrics.pop("loss")
        metrics.update(gap)
        return loss, batch.response_mask.sum().int(), metrics


def _gap(batch: Batch, logprobs: torch.Tensor) -> torch.Tensor:
    """Mean |engine log-prob − training log-prob| over the micro-batch's rollout tokens."""
    mask = batch.response_mask
    rollout = mask if batch.is_demo is None else mask * (~batch.is_demo.bool())[:, None].to(mask.dtype)
    diff = (logprobs * mask - batch.old_logprobs).abs() * rollout
    return diff.sum() / rollout.sum().clamp(min=1)
