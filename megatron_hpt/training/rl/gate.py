"""Step 3, gate: HPT's branch per prompt from its number of correct rollouts (SPEC §4.4), then,
once the rows exist, the branch as per-row weights and the switched-off rows removed.

The coefficients are ``hybrid/hpt_gate.py``'s, their spreading over a prompt's rows
``hybrid/row_weights.py``'s, the removal ``hybrid/gate_rows.gated_rows``. With ``--hpt-mode off``
no weights are set and no row is removed.
"""
from __future__ import annotations

import torch

from megatron_hpt.hybrid import BranchCoefficients, hpt_branch_coefficients
from megatron_hpt.hybrid.gate_rows import gated_rows
from megatron_hpt.hybrid.row_weights import row_weights
from megatron_hpt.loss.batch import Batch


def gate(rewards: torch.Tensor, n: int, rl_cfg) -> BranchCoefficients:
    """Branch coefficients of each prompt; rewards [P·n] prompt-major, 1 = correct;
    ``rl_cfg``: ``training/rl/config.RlConfig`` (``hpt_gate``, ``hpt_mode``)."""
    correct = rewards.view(-1, n).sum(dim=1)
    return hpt_branch_coefficients(correct, n, rl_cfg.hpt_gate, rl_cfg.hpt_mode)


def apply_gate(rows: Batch, branch: BranchCoefficients, n: int, with_demo: bool,
               mode: str) -> Batch:
    """``rows`` (per prompt: n rollouts, then its demonstration if ``with_demo``) with the
    branch's per-row weights, less the rows those weights switch off in every term."""
    if mode == "off":
        return rows
    return gated_rows(rows.replace(**row_weights(branch, n, with_demo)))
