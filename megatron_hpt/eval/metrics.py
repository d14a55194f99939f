"""avg@k and the unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models
Trained on Code", Eq. 1): pass@k = E[1 − C(n−c, k) / C(n, k)] over problems."""
from __future__ import annotations

from math import comb
from typing import Sequence


def avg_at_k(correct_per_problem: Sequence[Sequence[bool]]) -> float:
    """Mean accuracy over all k samples of all problems (the paper's avg@32 for AIME/AMC)."""
    flat = [bool(c) for row in correct_per_problem for c in row]
    if not flat:
        raise ValueError("avg_at_k: no samples")
    return sum(flat) / len(flat)


def pass_at_k(correct_per_problem: Sequence[Sequence[bool]], k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from the n
    generated ones is correct, averaged over problems (needs n >= k for every problem)."""
    total = 0.0
    for row in correct_per_problem:
        n, c = len(row), sum(bool(x) for x in row)
        if n < k:
            raise ValueError(f"pass_at_k: a problem has {n} samples, fewer than k={k}")
        total += 1.0 - (comb(n - c, k) / comb(n, k) if n - c >= k else 0.0)
    return total / len(correct_per_problem)
