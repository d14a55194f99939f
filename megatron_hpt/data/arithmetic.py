"""``builtin:arithmetic``: addition problems with a worked solution, generated from a seed.

A problem is ``"37+48="``; its demonstration works the columns right to left and ends with the
answer after ``#``: ``"7+8=15;3+4+1=8#85"``. Nothing is read from disk, so the CPU demo, the tests and
the benchmarks run anywhere. Problems are a pure function of (seed, index): any process, at any
parallel layout, rebuilds the same global batch.

Held-out problems are never trained on: the pairs (a, b) are split once by a fixed hash
(``is_held_out``, 1 pair in 8); training streams draw only training pairs, evaluation streams
(``held_out=True``) only held-out pairs. (2-digit addition has only 8100 pairs, so a training
run sees nearly all of its split; a different seed alone would not keep them apart.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np


@dataclass
class Problem:
    prompt: str
    """The question, e.g. ``37+48=``."""
    solution: str
    """Worked solution ending in ``#<answer>`` (the demonstration)."""
    answer: str
    """The ground-truth answer, e.g. ``85``."""


def worked_solution(a: int, b: int) -> str:
    """Column addition right to left with carries, then ``#`` and the sum."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={total}")
        carry = total // 10
    return ";".join(steps) + f"#{a + b}"


HELD_OUT_BUCKETS = 8  # one pair in 8 is held out


def is_held_out(a: int, b: int) -> bool:
    """Whether the pair (a, b) belongs to the held-out split (a fixed multiplicative hash)."""
    return ((a * 1_000_003 + b) * 2_654_435_761 >> 7) % HELD_OUT_BUCKETS == 0


def make_problem(seed: int, index: int, digits: int = 2, held_out: bool = False) -> Problem:
    """Problem ``index`` of stream ``seed``: pairs drawn until one of the requested split."""
    rng = np.random.default_rng([seed, index])
    lo, hi = 10 ** (digits - 1), 10 ** digits
    while True:
        a, b = (int(v) for v in rng.integers(lo, hi, size=2))
        if is_held_out(a, b) == held_out:
            return Problem(prompt=f"{a}+{b}=", solution=worked_solution(a, b), answer=str(a + b))


def problems(seed: int, start: int, count: int, digits: int = 2,
             held_out: bool = False) -> List[Problem]:
    return [make_problem(seed, start + i, digits, held_out) for i in range(count)]


def extract_answer(text: str) -> str | None:
    """The answer after the last ``#`` of a generated solution, or None."""
    if "#" not in text:
        return None
    ans = text.rsplit("#", 1)[1].strip()
    return ans if ans.isdigit() else None
