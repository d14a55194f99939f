"""DAPO dynamic sampling (SPEC §3, the ``dapo`` preset's ``filter_groups``): a prompt group whose
rewards are all equal has zero group-relative advantage and only dilutes the batch, so it is
dropped and more prompts are drawn until the replica holds its ``per_rank`` groups, for at most
``--max-rollout-rounds`` rounds. Every DP replica takes part in every round any replica needs
(one all-reduce MAX per round), so engines that decode collectively stay in step. A batch still
short after the last round is topped up with dropped groups (zero advantage, logged as
``unfilled groups``) so that the step keeps its shape.

Logged: ``filtered groups`` (groups dropped this step, all replicas), ``rollout rounds``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Tuple

import torch
import torch.distributed as dist

from megatron_hpt.loss.advantages import group_filter

#: one round: (problems [p], samples [p * n] prompt-major, rewards [p * n])
Draw = Callable[[int], Tuple[list, list, torch.Tensor]]


def fill_batch(draw: Draw, per_rank: int, n: int, max_rounds: int, group=None
               ) -> Tuple[list, list, torch.Tensor, Dict[str, float]]:
    """(problems, samples, rewards, stats) of ``per_rank`` groups, informative ones first in the
    order drawn; samples renumbered to the returned problems."""
    kept: List[tuple] = []
    dropped: List[tuple] = []
    rounds = 0
    for r in range(max_rounds):
        problems, samples, rewards = draw(r)
        rounds += 1
        keep = group_filter(rewards, torch.arange(len(problems)).repeat_interleave(n))
        for j, p in enumerate(problems):
            entry = (p, samples[j * n:(j + 1) * n], rewards[j * n:(j + 1) * n])
            (kept if bool(keep[j * n]) else dropped).append(entry)
        need = torch.tensor([float(len(kept) < per_rank)])
        if group is not None and dist.get_world_size(group) > 1:
            need = need.to(_device())
            dist.all_reduce(need, op=dist.ReduceOp.MAX, group=group)
        if float(need) == 0.0:
            break
    chosen = kept[:per_rank]
    unfilled = per_rank - len(chosen)
    chosen += dropped[:unfilled]
    problems = [p for p, _, _ in chosen]
    samples = [dataclasses.replace(s, prompt_index=j) for j, (_, ss, _) in enumerate(chosen) for s in ss]
    rewards = torch.cat([rw for _, _, rw in chosen])
    counts = torch.tensor([float(len(dropped)), float(unfilled)], dtype=torch.float64)
    if group is not None and dist.get_world_size(group) > 1:
        counts = counts.to(_device())
        dist.all_reduce(counts, group=group)
    stats = {"filtered groups": float(counts[0]), "unfilled groups": float(counts[1]),
             "rollout rounds": float(rounds)}
    return problems, samples, rewards, stats


def _device():
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
