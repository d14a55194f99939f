"""Tokenise (prompt, demonstration) pairs into fixed-length SFT rows.

A row is ``<bos> prompt solution <eos> <pad>...`` of length ``seq_length + 1``; the model reads
``tokens = row[:-1]`` and predicts ``labels = row[1:]``; ``response_mask`` is 1 on the labels that are
solution or <eos> tokens. Over-long rows are an error naming the row (never silently truncated).
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch

from megatron_hpt.loss.batch import Batch


def sft_rows(tokenizer, prompts: Sequence[Union[str, List[int]]], solutions: Sequence[str],
             seq_length: int, source: str = "<batch>") -> Batch:
    """A CPU ``Batch`` of tokens/labels/response_mask/position_ids, each [N, seq_length]. A prompt is text
    (BOS + its tokens) or already token ids (e.g. rendered with a chat template)."""
    n = len(prompts)
    rows = torch.full((n, seq_length + 1), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, seq_length + 1), dtype=torch.float32)
    for i, (p, s) in enumerate(zip(prompts, solutions)):
        p_ids = list(p) if not isinstance(p, str) else \
            [tokenizer.bos_token_id] + tokenizer.encode(p, add_special_tokens=False)
        s_ids = tokenizer.encode(s, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids = p_ids + s_ids
        if len(ids) > seq_length + 1:
            raise ValueError(f"{source}: row {i}: prompt+solution is {len(ids)} tokens, more than "
                             f"--seq-length + 1 = {seq_length + 1}; raise --seq-length")
        rows[i, :len(ids)] = torch.tensor(ids)
        mask[i, len(p_ids):len(ids)] = 1.0
    return Batch(tokens=rows[:, :-1].contiguous(), labels=rows[:, 1:].contiguous(),
                 response_mask=mask[:, 1:].contiguous(),
                 position_ids=torch.arange(seq_length).expand(n, seq_length).contiguous())
