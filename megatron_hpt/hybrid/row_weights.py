"""HPT's gate as per-row weights (SPEC §4.4): the per-prompt coefficients of ``hpt_gate.py``
spread over the rows of each prompt, as the loss reads them (``Batch`` fields).

Rows are laid out per prompt: its n rollouts, then (``with_demo``) its demonstration. A rollout
row gets its prompt's on-policy weight and no SFT or off-policy demo weight; the demonstration
row gets no on-policy weight, its prompt's SFT weight and its off-policy demo weight.
``gate_rows.gated_rows`` then removes the rows these weights switch off in every term.
"""
from __future__ import annotations

from typing import Dict

import torch

from megatron_hpt.hybrid.hpt_gate import BranchCoefficients


def row_weights(branch: BranchCoefficients, n: int, with_demo: bool) -> Dict[str, torch.Tensor]:
    """``on_policy_weight``, ``sft_weight``, ``demo_rl_weight``: each [P * (n + with_demo)]."""
    p = branch.on_policy.shape[0]
    per_row = n + int(with_demo)
    on_w = branch.on_policy[:, None].expand(p, per_row).clone()  # [P, rows per prompt]
    sft_w = torch.zeros(p, per_row)
    demo_rl_w = torch.zeros(p, per_row)
    if with_demo:
        on_w[:, -1] = 0.0
        sft_w[:, -1] = branch.sft
        demo_rl_w[:, -1] = branch.off_policy
    return {"on_policy_weight": on_w.reshape(-1), "sft_weight": sft_w.reshape(-1),
            "demo_rl_weight": demo_rl_w.reshape(-1)}
