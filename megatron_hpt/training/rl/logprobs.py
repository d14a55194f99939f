"""Step 6, old and reference log-probs of a rollout batch's micro-batches, before its first update.

π_old: where its log-probs come from is ``old_policy.old_logprob_source``'s choice; a forward-only
pass of the training model (``recompute_old_logprobs``) runs only where it changes the result.
π_ref: with a KL term, the frozen copy of the starting policy (``reference_logprobs``). Both
passes run megatron's forward schedule (``training/step.forward_logprobs``); their results land
on the last pipeline stage, where the loss runs.

What moves: the forward passes' own collectives; one all-reduce of the two-float logprob gap
over the DP group.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_hpt.loss.batch import Batch
from megatron_hpt.training.colocation import reference_on_device
from megatron_hpt.training.step import forward_logprobs


def recompute_old_logprobs(model, micro_batches: List[Batch], seq_length: int,
                           temperature: float, entropy_only: bool = False) -> Optional[float]:
    """Replace the engine's log-probs by the training model's and set π_old's entropy
    (``old_entropy``: EGSPO's gate, SRFT's weights); ``entropy_only``: keep the engine's
    log-probs. Returns the mean absolute gap between the two over rollout tokens (all DP
    replicas), None on stages without the loss."""
    fresh = forward_logprobs(model, micro_batches, seq_length, temperature)
    if not fresh:
        return None
    gap = torch.zeros(2, dtype=torch.float64, device=micro_batches[0].device)
    for mb, (logprobs, entropy) in zip(micro_batches, fresh):
        rollout_tokens = mb.response_mask * (~mb.is_demo)[:, None].float()
        gap += torch.stack([((logprobs - mb.old_logprobs).abs() * rollout_tokens).sum(),
                            rollout_tokens.sum()]).double()
        if not entropy_only:
            mb.old_logprobs = logprobs * mb.response_mask
        mb.old_entropy = entropy
    dist.all_reduce(gap, group=parallel_state.get_data_parallel_group())
    return float(gap[0] / gap[1].clamp(min=1))


def reference_logprobs(reference, micro_batches: List[Batch], seq_length: int,
                       temperature: float) -> None:
    """``ref_logprobs`` of each micro-batch under the frozen reference policy (KL terms)."""
    with reference_on_device(reference):  # --offload-reference: host memory otherwise
        ref = forward_logprobs(reference, micro_batches, seq_length, temperature)
    for mb, (logprobs, _) in zip(micro_batches, ref):
        mb.ref_logprobs = logprobs * mb.response_mask
