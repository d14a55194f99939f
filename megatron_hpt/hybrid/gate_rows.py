"""The rows a step trains on after HPT's gate, and their micro-batches (SPEC §4.4).

The released HPT trainer (TsinghuaC3I/Unify-Post-Training ``mix_trainer.py`` ``fit`` with
unify_strategy=switch, ``select_on_off_ada_balance``) *removes* the n rollouts of a prompt sent
to the SFT branch and adds its one demonstration; prompts on the RL branch get no
demonstration row at all. The gate's coefficients (hpt_gate.py) say the same thing as row
weights; ``gated_rows`` turns the zero-weight rows into removed rows, so they count in no
normaliser (RL/SFT/entropy tokens, sequences) and cost no forward pass. Soft mode keeps every
row with a non-zero weight in some term.

``mini_batches`` cuts a rank's rows into optimizer-step mini-batches of whole prompts and those
into micro-batches of at most ``micro_batch_size`` rows. With pipeline parallelism every
micro-batch must have the same shape, so the last one is filled with empty rows (loss mask
0: they count nowhere either).
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


def _empty_rows(rows: Batch, count: int, pad_token_id: int) -> Batch:
    """``count`` rows that count nowhere: pad tokens, loss mask 0, weights 0, not demos."""
    out = {}
    for k, v in rows.tensors().items():
        fill = torch.zeros((count,) + tuple(v.shape[1:]), dtype=v.dtype, device=v.device)
        if k in ("tokens", "labels"):
            fill.fill_(pad_token_id)
        if k == "position_ids":
            fill = v[:1].expand(count, *v.shape[1:]).clone()
        if k == "prompt_index":
            fill.fill_(-1)
        out[k] = fill
    return rows.replace(**out)


def mini_batches(rows: Batch, num_prompts: int, updates: int, micro_batch_size: int,
                 pad_token_id: int, fill_last: bool) -> List[List[Batch]]:
    """Rows -> ``updates`` mini-batches (whole prompts) -> micro-batches.

    rows: this rank's rows with ``prompt_index`` [N] (0..num_prompts−1, rows of a prompt
    together, prompts in order). Mini-batch u holds prompts [u·P/updates, (u+1)·P/updates).
    fill_last: pad each mini-batch's last micro-batch to ``micro_batch_size`` with empty rows
    (pipeline parallelism needs equal shapes).
    """
    if num_prompts % updates:
        raise ValueError(f"{num_prompts} prompts per rank do not split into {updates} "
                         "optimizer steps (--rollout-batch-size / --global-batch-size)")
    per_update = num_prompts // updates
    prompt = rows.prompt_index
    out = []
    for u in range(updates):
        sel = (prompt >= u * per_update) & (prompt < (u + 1) * per_update)
        micro = rows.select(torch.nonzero(sel).flatten()).split(micro_batch_size)
        short = micro_batch_size - micro[-1].num_rows if micro else 0
        if fill_last and short > 0:
            micro[-1] = Batch.cat([micro[-1], _empty_rows(micro[-1], short, pad_token_id)])
        out.append(micro)
    return out
