"""HPT's gate (SPEC §4.4): from the number of correct rollouts of a prompt to its branch.

Per prompt with c correct out of n rollouts the gate returns three coefficients:

    on_policy  — weight of the prompt's n rollouts in the RL term,
    off_policy — weight of its demonstration in the off-policy demo term (π_ref ≡ 1),
    sft        — weight of its demonstration in the SFT (NLL) term.

``switch`` (the released code): c ≤ gate → (0, 0, 1), the rollouts are dropped and the
demonstration is trained with NLL; else (1, 0, 0). No extra rollouts are generated.
``soft`` (described in the paper, dead code in the release): a table indexed by c, written for
n = 8; for another n, c is rescaled to eighths (rounded) before the lookup.
``off``: (1, 1, 1) — every prompt on the RL branch and its demonstration used as the preset says.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: c (correct out of 8) -> (on_policy, off_policy, sft); c = 0 is the all-wrong case.
HPT_SOFT_TABLE = {
    0: (0.0, 0.0, 1.0), 1: (0.0, 0.0, 1.0), 2: (0.125, 0.5, 0.5), 3: (0.25, 1.0, 0.25),
    4: (0.5, 0.5, 0.125), 5: (1.0, 0.25, 0.0), 6: (1.0, 0.125, 0.0), 7: (1.0, 0.0, 0.0),
    8: (1.0, 0.0, 0.0),
}


@dataclass
class BranchCoefficients:
    on_policy: torch.Tensor
    """[P] weight of each prompt's rollouts in the RL term."""
    off_policy: torch.Tensor
    """[P] weight of each prompt's demonstration in the off-policy demo term."""
    sft: torch.Tensor
    """[P] weight of each prompt's demonstration in the SFT term."""

    @property
    def sft_share(self) -> float:
        """Share of prompts whose demonstration gets SFT weight (HPT's logged statistic)."""
        return float((self.sft > 0).double().mean()) if self.sft.numel() else 0.0


def hpt_branch_coefficients(correct: torch.Tensor, n: int, gate: int = 0,
                            mode: str = "switch") -> BranchCoefficients:
    """``correct``: [P] number of correct rollouts per prompt (0..n)."""
    c = correct.to(torch.long)
    if (c < 0).any() or (c > n).any():
        raise ValueError(f"correct counts must lie in [0, {n}], got {c.tolist()}")
    ones, zeros = torch.ones(c.shape, dtype=torch.float32), torch.zeros(c.shape, dtype=torch.float32)
    if mode == "off":
        return BranchCoefficients(ones, ones.clone(), ones.clone())
    if mode == "switch":
        to_sft = c <= gate
        return BranchCoefficients(torch.where(to_sft, zeros, ones), zeros.clone(),
                                  torch.where(to_sft, ones, zeros))
    if mode == "soft":
        eighths = torch.round(c.double() * 8 / n).long().tolist()
        table = torch.tensor([HPT_SOFT_TABLE[k] for k in eighths], dtype=torch.float32).reshape(-1, 3)
        return BranchCoefficients(table[:, 0], table[:, 1], table[:, 2])
    raise ValueError(f"--hpt-mode {mode!r}: choose switch, soft or off")
