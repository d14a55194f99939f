"""Where a task's prompts come from: the built-in arithmetic task or a data file (records.py).

``PromptSource.items(start, count)`` returns items ``start .. start+count-1`` of an endless,
deterministic stream (a pure function of the seed and the index, the same on every rank and
layout): built-in problems are generated; file records are visited in a seeded order, reshuffled
every pass. Each item carries the prompt's token ids, its demonstration (or None) and answer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from megatron_hpt.data import arithmetic

BUILTIN = "builtin:arithmetic"
#: held-out builtin problems of a run with --seed S come from the seed stream S + this offset
HELD_OUT_SEED_OFFSET = 1_000_003


@dataclass
class PromptItem:
    prompt_ids: List[int]
    """Tokenized prompt (BOS / chat template included)."""
    demonstration: Optional[str]
    """Expert solution text (without EOS), or None."""
    answer: str
    """Ground truth for the reward."""


class PromptSource:
    def __init__(self, data_path: str, tokenizer, seed: int, skip_bad_rows: bool = False,
                 need_demonstrations: bool = False):
        self.tokenizer, self.seed, self.builtin = tokenizer, seed, data_path == BUILTIN
        self.skipped = 0
        if not self.builtin:
            from megatron_hpt.data.records import read_records
            data = read_records(data_path, skip_bad_rows, need_demonstrations)
            self.records, self.skipped = data.records, data.skipped
            self._order = {}

    @property
    def default_reward(self) -> str:
        return "arithmetic" if self.builtin else "math"

    def items(self, start: int, count: int) -> List[PromptItem]:
        if self.builtin:
            tok = self.tokenizer
            return [PromptItem([tok.bos_token_id] + tok.encode(p.prompt, add_special_tokens=False),
                               p.solution, p.answer)
                    for p in arithmetic.problems(self.seed, start, count)]
        from megatron_hpt.data.records import epoch_order, render_prompt
        n, out = len(self.records), []
        for k in range(start, start + count):
            epoch = k // n
            if epoch not in self._order:
                self._order = {epoch: epoch_order(n, self.seed, epoch)}
            rec = self.records[self._order[epoch][k % n]]
            ids = rec.prompt_ids if rec.prompt_ids is not None else \
                render_prompt(rec.prompt, self.tokenizer)
            out.append(PromptItem(list(ids), rec.demonstration, rec.answer))
        return out
