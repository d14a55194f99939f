"""Verifiable rewards: 1.0 for a correct final answer, else 0.0.

``REWARDS`` is the registry (``--reward-type`` name -> grader), the one place the trainer's and
the tools' choices come from:

``arithmetic``: the built-in task's answer after the last ``#`` equals the ground truth exactly.
``math``: math-verify parses the response's final answer (``\\boxed{}`` first, then LaTeX or
plain expressions) and checks it against the ground truth symbolically, each step bounded by a
timeout (``--reward-timeout``) so a pathological expression costs a zero, not a stuck step.

A user's own grader: ``--reward-fn module:function``, a function ``(response, answer) -> float``
importable from the working directory or ``PYTHONPATH``; each call runs under a wall-clock limit
of ``--reward-timeout`` seconds (``user.py``): one that passes it, or raises, scores 0.

Adding a built-in reward: a function ``(response, answer, timeout_s) -> float`` in this package,
plus its entry in ``REWARDS``.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict

from megatron_hpt.data.arithmetic import extract_answer
from megatron_hpt.rewards.user import load_user_reward

RewardFn = Callable[[str, str], float]


def arithmetic_reward(response: str, answer: str) -> float:
    return float(extract_answer(response) == answer)


def math_reward(response: str, answer: str, timeout_s: int = 5) -> float:
    from math_verify import parse, verify
    gold = parse(answer, parsing_timeout=timeout_s)
    if not gold:  # a bare ground truth that the LaTeX extractor does not anchor on
        gold = parse(f"${answer}$", parsing_timeout=timeout_s)
    pred = parse(response, parsing_timeout=timeout_s)
    if not gold or not pred:
        return 0.0
    return float(verify(gold, pred, timeout_seconds=timeout_s))


def _arithmetic(response: str, answer: str, timeout_s: int = 5) -> float:
    return arithmetic_reward(response, answer)  # exact match: nothing to bound


#: ``--reward-type`` name -> grader ``(response, answer, timeout_s) -> float``.
REWARDS: Dict[str, Callable[[str, str, int], float]] = {
    "arithmetic": _arithmetic,
    "math": math_reward,
}


def reward_fn(name: str, timeout_s: int = 5) -> RewardFn:
    """The grader ``(response, answer) -> float`` of a ``REWARDS`` name, or of a user's
    ``module:function`` (run under a ``timeout_s`` wall-clock limit)."""
    if ":" in name:
        return load_user_reward(name, timeout_s)
    if name not in REWARDS:
        raise ValueError(f"--reward-type {name!r}: choose one of {', '.join(REWARDS)}, or give "
                         "your own grader with --reward-fn module:function")
    return functools.partial(REWARDS[name], timeout_s=timeout_s)
