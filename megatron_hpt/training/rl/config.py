"""The RL task's configuration: its flags (HPT gate, DAPO rounds), ``RlConfig``, the row arithmetic
of a rollout batch and the checks an RL run (any preset but sft) must pass before anything is
allocated (``arguments.validate`` calls ``rl_config_errors``).

Rows of one rollout batch: per prompt its n rollouts and, for presets that train on them, its
demonstration. The engine and sampling flags are ``rollout/config.py``'s.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List

from megatron_hpt.rollout.config import engine_errors


def add_rl_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the RL task: HPT gate, DAPO dynamic sampling")
    g.add_argument("--max-rollout-rounds", type=int, default=4,
                   help="DAPO dynamic sampling (presets with filter_groups, e.g. dapo): at most "
                        "this many rounds of --rollout-batch-size prompts per step to replace "
                        "groups whose rewards are all equal")
    g.add_argument("--hpt-gate", type=int, default=0,
                   help="HPT switch mode: a prompt with <= this many correct rollouts takes the "
                        "SFT branch (0 for Qwen, 2 for Llama in the paper)")
    g.add_argument("--hpt-mode", default=None, choices=("switch", "soft", "off"),
                   help="default: switch for the hpt presets, off otherwise. switch: gate as released; soft: the paper's per-count coefficient table; "
                        "off: every prompt on the RL branch, demonstrations as the preset uses them")


@dataclass
class RlConfig:
    hpt_gate: int = 0
    """HPT switch mode: prompts with at most this many correct rollouts take the SFT branch."""
    hpt_mode: str = "switch"
    """switch | soft | off (see megatron_hpt.hybrid.hpt_gate)."""
    max_rollout_rounds: int = 4
    """DAPO dynamic sampling: most rounds of prompts drawn per step (training/rl/dynamic_sampling.py)."""


def rl_config_from_args(args: argparse.Namespace) -> RlConfig:
    """The namespace's RL-task flags; ``--hpt-mode`` defaults by preset."""
    return RlConfig(
        hpt_gate=args.hpt_gate, max_rollout_rounds=args.max_rollout_rounds,
        hpt_mode=args.hpt_mode or ("switch" if args.loss_preset.startswith("hpt") else "off"))


def uses_demonstrations(cfg) -> bool:
    """Whether the RL task adds one demonstration row per prompt: the preset trains on demos
    (SFT term or off-policy demo term) or HPT's gate may send a prompt to its SFT branch."""
    return cfg.loss.sft_coef > 0 or cfg.loss.demo_rl_coef > 0 or cfg.loss.mixed_group


def rows_per_prompt(cfg) -> int:
    """Rows of one prompt: its n rollouts and, if used, its demonstration."""
    return cfg.rollout.n_samples_per_prompt + int(uses_demonstrations(cfg))


def rows_per_rollout(cfg) -> int:
    """Rows of one RL rollout batch: per prompt its n rollouts and, if used, its demonstration."""
    return cfg.rollout.batch_size * rows_per_prompt(cfg)


def rl_config_errors(cfg, pp: int, dp: int) -> List[str]:
    """What keeps an RL run (any preset but sft) from starting, one message per problem."""
    ro = cfg.rollout
    errors = engine_errors(ro, pp, dp)
    rows = rows_per_rollout(cfg)
    per_prompt = rows_per_prompt(cfg)
    updates = rows // cfg.global_batch_size if cfg.global_batch_size else 0
    if not updates or rows % cfg.global_batch_size or (ro.batch_size // max(dp, 1)) % updates:
        errors.append(f"--global-batch-size {cfg.global_batch_size} must be the rows of one "
                      f"rollout batch, --rollout-batch-size x (--n-samples-per-prompt"
                      f"{' + 1 demonstration' if uses_demonstrations(cfg) else ''}) = {rows}, "
                      f"or that divided by a number of updates that divides each DP rank's "
                      f"prompts (mini-batches of whole groups of {per_prompt} rows); drop the "
                      f"flag for one update per rollout batch")
    if cfg.rl.max_rollout_rounds < 1:
        errors.append(f"--max-rollout-rounds {cfg.rl.max_rollout_rounds} must be >= 1")
    if cfg.rl.hpt_mode == "soft" and cfg.loss.demo_rl_coef == 0:
        errors.append("--hpt-mode soft trains the demonstrations off-policy too: add "
                      "--loss-demo-rl-coef 1")
    return errors
