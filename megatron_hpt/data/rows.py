"""Training rows: one builder for demonstrations and rollouts (DESIGN §1).

A row is ``prompt response <pad>...`` of length ``seq_length + 1``; the model reads
``tokens = row[:-1]`` and predicts ``labels = row[1:]``; ``response_mask`` is 1 on the labels
that are response tokens. A demonstration's response is its solution then <eos>; a rollout's is
what the engine sampled, with each sampled token's log-prob under ``old_logprobs`` at its label
position. Over-long rows are an error naming the row (never silently truncated).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from megatron_hpt.loss.batch import Batch


def token_rows(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
               seq_length: int, pad_token_id: int,
               logprobs: Optional[Sequence[Sequence[float]]] = None,
               source: str = "<batch>") -> Batch:
    """A CPU ``Batch`` of rows ``prompts[i] + responses[i]``: tokens / labels / response_mask /
    position_ids [N, seq_length], and ``old_logprobs`` [N, seq_length] when ``logprobs`` (one
    value per response token) are given."""
    n = len(prompts)
    rows = torch.full((n, seq_length + 1), pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, seq_length + 1), dtype=torch.float32)
    old = torch.zeros((n, seq_length + 1)) if logprobs is not None else None
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids = list(p) + list(r)
        if len(ids) > seq_length + 1:
            raise ValueError(f"{source}: row {i}: prompt + response is {len(ids)} tokens, more "
                             f"than --seq-length + 1 = {seq_length + 1}; raise --seq-length")
        rows[i, :len(ids)] = torch.tensor(ids)
        mask[i, len(p):len(ids)] = 1.0
        if old is not None:
            old[i, len(p):len(ids)] = torch.tensor(logprobs[i], dtype=torch.float32)
    return Batch(tokens=rows[:, :-1].contiguous(), labels=rows[:, 1:].contiguous(),
                 response_mask=mask[:, 1:].contiguous(),
                 old_logprobs=None if old is None else old[:, 1:].contiguous(),
                 position_ids=torch.arange(seq_length).expand(n, seq_length).contiguous())


def demonstration_ids(tokenizer, prompt: Union[str, List[int]], solution: str):
    """(prompt ids, response ids) of one demonstration: a text prompt is BOS + its tokens (ids,
    e.g. rendered with a chat template, are kept); the response is the solution + <eos>."""
    p_ids = list(prompt) if not isinstance(prompt, str) else \
        [tokenizer.bos_token_id] + tokenizer.encode(prompt, add_special_tokens=False)
    return p_ids, tokenizer.encode(solution, add_special_tokens=False) + [tokenizer.eos_token_id]


def sft_rows(tokenizer, prompts: Sequence[Union[str, List[int]]], solutions: Sequence[str],
             seq_length: int, source: str = "<batch>") -> Batch:
    """Demonstration rows (prompt, solution + <eos>), without old log-probs."""
    pairs = [demonstration_ids(tokenizer, p, s) for p, s in zip(prompts, solutions)]
    return token_rows([p for p, _ in pairs], [r for _, r in pairs], seq_length,
                      tokenizer.pad_token_id, source=source)


def rollout_rows(samples, seq_length: int, pad_token_id: int, source: str = "rollouts") -> Batch:
    """Rollout rows ``prompt + response`` of ``rollout.RolloutSample``s, with the engine's
    sampled-token log-probs as ``old_logprobs``."""
    return token_rows([s.prompt_token_ids for s in samples], [s.response_token_ids for s in samples],
                      seq_length, pad_token_id, logprobs=[s.logprobs for s in samples],
                      source=source)
