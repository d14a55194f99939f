"""Rollout configuration: the engine and sampling flags (``--rollout-*``, ``--n-samples-per-prompt``),
``RolloutConfig`` and the engine's own checks (``engine_errors``). The RL task's flags (HPT gate,
DAPO rounds), its row arithmetic and its checks are in ``training/rl/config.py``."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List, Optional

from megatron_hpt.rollout.engines import (DEFAULT_ENGINE, ENGINES, check_engine_available,
                                          engine_spec)


def add_rollout_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rollouts (any --loss-preset other than sft)")
    g.add_argument("--rollout-engine", default=DEFAULT_ENGINE, choices=tuple(ENGINES),
                   help="; ".join(f"{name}: {spec.help}" for name, spec in ENGINES.items()))
    g.add_argument("--rollout-weight-bucket-mb", type=int, default=512,
                   help="size bound of one bucket of the Megatron -> engine weight stream")
    g.add_argument("--rollout-gpu-memory-utilization", type=float, default=0.5,
                   help="fraction of GPU memory the colocated vLLM takes (weights + KV cache); "
                        "size it with tools/plan.py")
    g.add_argument("--rollout-batch-size", type=int, default=8, help="prompts per optimizer step")
    g.add_argument("--n-samples-per-prompt", type=int, default=8, help="rollouts per prompt")
    g.add_argument("--rollout-temperature", type=float, default=1.0)
    g.add_argument("--rollout-top-p", type=float, default=1.0)
    g.add_argument("--rollout-top-k", type=int, default=0, help="0 = off")
    g.add_argument("--rollout-max-response-len", type=int, default=None,
                   help="max new tokens per rollout (default: what --seq-length leaves)")
    g.add_argument("--rollout-logprobs", default="auto", choices=("auto", "engine", "recompute"),
                   help="old log-probs: the engine's sampled-token log-probs, or one forward pass "
                        "of the training model (auto: recompute for vllm, whose kernels and "
                        "precision differ from training; engine for embedded, the same model)")


@dataclass
class RolloutConfig:
    engine: str = DEFAULT_ENGINE
    """A name of ``rollout/engines.ENGINES``: embedded (the training model decodes) or vllm
    (colocated vLLM)."""
    weight_bucket_mb: int = 512
    """Size bound of one bucket of the weight stream pushed to the engine."""
    gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory the colocated vLLM takes (--rollout-gpu-memory-utilization)."""
    batch_size: int = 8
    """Prompts per optimizer step."""
    n_samples_per_prompt: int = 8
    """Rollouts per prompt (the group of the group-relative advantages)."""
    temperature: float = 1.0
    """Sampling temperature; the loss head recomputes log-probs at the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling (1 = off)."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    max_response_len: Optional[int] = None
    """Max new tokens per rollout (None: what the sequence length leaves after the prompt)."""
    old_logprobs: str = "engine"
    """engine (sampled-token log-probs reported by the engine) or recompute (a forward pass of
    the training model before the update)."""


def rollout_config_from_args(args: argparse.Namespace) -> RolloutConfig:
    """The namespace's rollout flags; ``auto`` choices resolved by preset and engine."""
    return RolloutConfig(
        engine=args.rollout_engine, weight_bucket_mb=args.rollout_weight_bucket_mb,
        gpu_memory_utilization=args.rollout_gpu_memory_utilization,
        batch_size=args.rollout_batch_size, n_samples_per_prompt=args.n_samples_per_prompt,
        temperature=args.rollout_temperature, top_p=args.rollout_top_p, top_k=args.rollout_top_k,
        max_response_len=args.rollout_max_response_len,
        old_logprobs=_auto_old_logprobs(args.rollout_engine)
        if args.rollout_logprobs == "auto" else args.rollout_logprobs)


def _auto_old_logprobs(engine: str) -> str:
    """``--rollout-logprobs auto``: the engine's own log-probs when it decodes with the training
    model, else a recompute (another engine's kernels and precision differ from training's)."""
    spec = ENGINES.get(engine)
    return "engine" if spec is not None and spec.engine.shares_training_weights else "recompute"


def engine_errors(ro: RolloutConfig, pp: int, dp: int) -> List[str]:
    """What keeps the rollout engine of ``ro`` from running at this layout, one message per
    problem (``training/rl/config.rl_config_errors`` adds the RL task's own checks)."""
    errors: List[str] = []
    try:
        check_engine_available(ro.engine)
    except (ImportError, ValueError) as e:
        errors.append(str(e))
    if ro.engine in ENGINES and not engine_spec(ro.engine).pipeline_parallel and pp > 1:
        others = [n for n, spec in ENGINES.items() if spec.pipeline_parallel]
        errors.append(f"--rollout-engine {ro.engine} decodes with the training model, which "
                      "needs --pipeline-model-parallel-size 1; use --rollout-engine "
                      + " or ".join(others))
    if ro.batch_size % max(dp, 1):
        errors.append(f"--rollout-batch-size {ro.batch_size} is not divisible by the "
                      f"data-parallel size {dp} (each DP rank rolls out its own prompts)")
    return errors
