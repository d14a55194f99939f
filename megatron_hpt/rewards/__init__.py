"""Verifiable rewards: 1.0 for a correct final answer, else 0.0.

``arithmetic``: the built-in task's answer after the last ``#`` equals the ground truth exactly.
``math``: math-verify parses the response's final answer (``\\boxed{}`` first, then LaTeX or
plain expressions) and checks it against the ground truth symbolically, each step bounded by a
timeout (``--reward-timeout``) so a pathological expression costs a zero, not a stuck step.
"""
from __future__ import annotations

from typing import Callable

from megatron_hpt.data.arithmetic import extract_answer

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


def reward_fn(name: str, timeout_s: int = 5) -> RewardFn:
    """``arithmetic`` or ``math``."""
    if name == "arithmetic":
        return arithmetic_reward
    if name == "math":
        return lambda response, answer: math_reward(response, answer, timeout_s)
    raise ValueError(f"--reward-type {name!r}: choose arithmetic or math")
