"""Step 5, mini-batches: a rollout batch's rows -> ``updates`` optimizer-step mini-batches of
whole prompts (``hybrid/gate_rows.update_rows``), each cut into micro-batches (fixed size or by
token budget, ``training/packing.py``).

The later steps (log-probs, advantages) run on the micro-batches; ``row_index`` says which of
``rows`` each micro-batch holds, so per-row results computed on ``rows`` go back to them.
"""
from __future__ import annotations

from typing import List, Tuple

from megatron_hpt.hybrid.gate_rows import update_rows
from megatron_hpt.loss.batch import Batch
from megatron_hpt.training import packing


def mini_batches(rows: Batch, num_prompts: int, updates: int, cfg
                 ) -> Tuple[List[List[Batch]], List[List[int]]]:
    """(micro-batches of each mini-batch, each micro-batch's row indices into ``rows``, in the
    order of the flattened micro-batches). rows: ``prompt_index`` [N] in 0..num_prompts−1."""
    out, row_index = [], []
    for idx in update_rows(rows, num_prompts, updates):
        sub: list = []
        out.append(packing.micro_batches(rows.select(idx), cfg, sub))
        row_index += [[idx[i] for i in s] for s in sub]
    return out, row_index


def flatten(mini: List[List[Batch]]) -> List[Batch]:
    """Every micro-batch of the rollout batch, mini-batch after mini-batch."""
    return [mb for m in mini for mb in m]
