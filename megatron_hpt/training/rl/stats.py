"""The rollout statistics of a step, averaged over DP replicas: `reward`, `sft share`,
`response length`, `truncated` (share of samples that hit the token limit).

What moves: one all-reduce of four floats over the DP group."""
from __future__ import annotations

from typing import Dict

import torch
import torch.distributed as dist


def rollout_stats(rewards: torch.Tensor, sft_share: float, samples, device, group
                  ) -> Dict[str, float]:
    """rewards [P·n] of this replica's samples; ``sft_share``: the gate's share of SFT prompts."""
    lengths = torch.tensor([len(s.response_token_ids) for s in samples], dtype=torch.float32)
    local = torch.tensor([float(rewards.mean()), sft_share, float(lengths.mean()),
                          sum(s.finish_reason == "length" for s in samples) / len(samples)],
                         dtype=torch.float64, device=device)
    dist.all_reduce(local, group=group)
    local /= dist.get_world_size(group)
    return {"reward": float(local[0]), "sft share": float(local[1]),
            "response length": float(local[2]), "truncated": float(local[3])}
