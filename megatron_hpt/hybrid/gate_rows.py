"""The rows a step trains on after HPT's gate, and their micro-batches (SPEC §4.4).

The released HPT trainer (TsinghuaC3I/Unify-Post-Training ``mix_trainer.py`` ``fit`` with
unify_strategy=switch, ``select_on_off_ada_balance``) *removes* the n rollouts of a prompt sent
to the SFT branch and adds its one demonstration; prompts on the RL branch get no
demonstration row at all. The gate's coefficients (hpt_gate.py) say the same thing as row
weights; ``gated_rows`` turns the zero-weight rows into removed rows, so they count in no
normaliser (RL/SFT/entropy tokens, sequences) and cost no forward pass. Soft mode keeps every
row with a non-zero weight in some term.

``update_rows`` gives the rows of each optimizer-step mini-batch of whole prompts.
"""
from __future__ import annotations

from typing import List

import torch

from megatron_hpt.loss.batch import Batch


def chord_step(iteration: int) -> int:
    """Trinity-RFT's step number (1-based) of the 0-based optimizer ``iteration`` (CHORD's μ)."""
    return iteration + 1


def gated_rows(rows: Batch) -> Batch:
    """``rows`` without the rows that the gate's weights switch off in every term.

    rows: a ``Batch`` with ``is_demo`` [N] and optionally ``on_policy_weight``,
    ``sft_weight``, ``demo_rl_weight`` [N] (as given to the loss). Without the weights (gate
    off) nothing is removed. A rollout row stays when its on-policy weight is non-zero; a
    demonstration row stays when its SFT or off-policy weight is non-zero.
    """
    if rows.on_policy_weight is None:
        return rows
    demo = rows.is_demo.bool()
    on = rows.on_policy_weight != 0
    off = (rows.sft_weight != 0) | (rows.demo_rl_weight != 0)
    keep = torch.where(demo, off, on)
    return rows.select(torch.nonzero(keep).flatten())


def update_rows(rows: Batch, num_prompts: int, updates: int) -> List[List[int]]:
    """Row indices of each of the ``updates`` optimizer-step mini-batches of whole prompts.

    rows: this rank's rows with ``prompt_index`` [N] (0..num_prompts−1, rows of a prompt
    together, prompts in order). Mini-batch u holds prompts [u·P/updates, (u+1)·P/updates);
    the trainer cuts each into micro-batches (training/packing.py).
    """
    if num_prompts % updates:
        raise ValueError(f"{num_prompts} prompts per rank do not split into {updates} "
                         "optimizer steps (--rollout-batch-size / --global-batch-size)")
    per_update = num_prompts // updates
    prompt = rows.prompt_index
    return [torch.nonzero((prompt >= u * per_update) & (prompt < (u + 1) * per_update))
            .flatten().tolist() for u in range(updates)]
