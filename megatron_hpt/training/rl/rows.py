"""Step 4, rows: a rollout batch's training rows, per prompt its n rollouts and then, for presets
that train on them, its demonstration (``data/rows.py`` builds both kinds).

Per row: ``is_demo``; ``rewards`` (the grade of a rollout, 1 for a demonstration);
``prompt_index`` (the prompt within this replica's rollout batch). A demonstration's
``old_logprobs`` are 0 (π_ref ≡ 1 for demonstrations).
"""
from __future__ import annotations

import torch

from megatron_hpt.data.rows import rollout_rows, sft_rows
from megatron_hpt.loss.batch import Batch


def rollout_batch_rows(samples, problems, rewards: torch.Tensor, n: int, with_demos: bool,
                       tokenizer, seq_length: int, source: str = "<batch>") -> Batch:
    """A CPU ``Batch`` of P·(n + with_demos) rows. samples: P·n ``RolloutSample``s,
    prompt-major; problems: the P prompts (``prompt_ids``, ``demonstration``); rewards [P·n]."""
    p = len(problems)
    rows = rollout_rows(samples, seq_length, tokenizer.pad_token_id)
    per_row = n + int(with_demos)
    is_demo = torch.zeros(p, per_row, dtype=torch.bool)
    all_rewards = rewards.view(p, n)
    if with_demos:
        demos = sft_rows(tokenizer, [q.prompt_ids for q in problems],
                         [q.demonstration for q in problems], seq_length, source=source)
        demos.old_logprobs = torch.zeros_like(demos.response_mask)  # π_ref ≡ 1 for demos
        rows = Batch.cat([part for j in range(p)
                          for part in (rows.select(slice(j * n, (j + 1) * n)),
                                       demos.select(slice(j, j + 1)))])
        is_demo[:, -1] = True
        all_rewards = torch.cat([all_rewards, torch.ones(p, 1)], dim=1)
    return rows.replace(
        is_demo=is_demo.reshape(-1), rewards=all_rewards.reshape(-1).float(),
        prompt_index=torch.arange(p)[:, None].expand(p, per_row).reshape(-1))
