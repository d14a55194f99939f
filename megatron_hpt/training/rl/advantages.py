"""Step 7, advantages: ``loss/advantages.compute_advantages`` over each prompt's group of rows
(a demonstration inside the group for mixed-group presets such as LUFFY), put on the
micro-batches. Last of the steps because KL in the reward (REINFORCE++) reads the old and
reference log-probs, which the micro-batches hold.

Rows of one prompt stay on one DP replica, so group statistics never cross ranks; ``group`` is
only for REINFORCE++'s whitening over the global batch.
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from megatron_hpt.loss import compute_advantages
from megatron_hpt.loss.batch import Batch
from megatron_hpt.training import packing


def rollout_advantages(rows: Batch, loss_cfg, micro_batches: Sequence[Batch] = (),
                       row_index: Sequence[Sequence[int]] = (), seq_length: int = 0,
                       group=None) -> torch.Tensor:
    """[N] (or [N, T] for REINFORCE++) float32 advantages of ``rows`` (``rewards``,
    ``prompt_index``, ``is_demo``, ``response_mask``). With KL in the reward the micro-batches'
    old and reference log-probs are put back in row order (``row_index``) first."""
    extras = {}
    if loss_cfg.kl_mode == "reward" and micro_batches and micro_batches[0].ref_logprobs is not None:
        extras = {k: packing.unpack([getattr(mb, k) for mb in micro_batches], row_index,
                                    rows.num_rows, seq_length)
                  for k in ("old_logprobs", "ref_logprobs")}
    return compute_advantages(rows.rewards, rows.prompt_index, loss_cfg, is_demo=rows.is_demo,
                              response_mask=rows.response_mask, group=group, **extras).float()


def attach_advantages(advantages: torch.Tensor, micro_batches: List[Batch],
                      row_index: Sequence[Sequence[int]]) -> None:
    """Each micro-batch's rows of ``advantages`` (per-token ones cut to its width)."""
    for idx, mb in zip(row_index, micro_batches):
        adv = advantages[torch.tensor(idx, device=advantages.device)]
        mb.advantages = adv[:, :mb.response_mask.shape[1]] if adv.dim() == 2 else adv
