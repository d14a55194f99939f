"""Rollout and RL-task configuration: the ``--rollout-*`` / ``--hpt-*`` flags, ``RolloutConfig``,
and the checks an RL run must pass before anything is allocated (``arguments.validate`` calls
``rl_config_errors``). The row arithmetic of a rollout batch lives here too: per prompt its n
rollouts and, for presets that train on them, its demonstration."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List, Optional

from megatron_hpt.rollout.assignment import rollout_layout_errors, rollout_tensor_parallel_size
from megatron_hpt.rollout.engines import (DEFAULT_ENGINE, ENGINES, check_engine_available,
                                          engine_spec)


def add_rollout_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rollouts and the HPT gate (any --loss-preset other than sft)")
    g.add_argument("--rollout-engine", default=DEFAULT_ENGINE, choices=tuple(ENGINES),
                   help="; ".join(f"{name}: {spec.help}" for name, spec in ENGINES.items()))
    g.add_argument("--rollout-weight-bucket-mb", type=int, default=512,
                   help="size bound of one bucket of the Megatron -> engine weight stream")
    g.add_argument("--rollout-gpu-memory-utilization", type=float, default=0.5,
                   help="fraction of GPU memory the colocated vLLM takes (weights + KV cache); "
                        "size it with tools/plan.py")
    g.add_argument("--rollout-tensor-parallel-size", type=int, default=None,
                   help="ranks per rollout engine (default: --tensor-model-parallel-size); every "
                        "rank belongs to one engine and the batch's prompts are spread over all "
                        "engines (pipeline stages generate too). vllm only: the embedded engine "
                        "decodes with the training model, at its TP")
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
class RolloutConfig:
    engine: str = DEFAULT_ENGINE
    """A name of ``rollout/engines.ENGINES``: embedded (the training model decodes) or vllm
    (colocated vLLM)."""
    weight_bucket_mb: int = 512
    """Size bound of one bucket of the weight stream pushed to the engine."""
    gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory the colocated vLLM takes (--rollout-gpu-memory-utilization)."""
    tensor_parallel_size: Optional[int] = None
    """Ranks per rollout engine (--rollout-tensor-parallel-size; None: the training TP size).
    See rollout/assignment.py for who generates what."""
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
    hpt_gate: int = 0
    """HPT switch mode: prompts with at most this many correct rollouts take the SFT branch."""
    hpt_mode: str = "switch"
    """switch | soft | off (see megatron_hpt.hybrid.hpt_gate)."""
    old_logprobs: str = "engine"
    """engine (sampled-token log-probs reported by the engine) or recompute (a forward pass of
    the training model before the update)."""
    max_rollout_rounds: int = 4
    """DAPO dynamic sampling: most rounds of prompts drawn per step (training/dynamic_sampling.py)."""


def rollout_config_from_args(args: argparse.Namespace) -> RolloutConfig:
    """The namespace's rollout flags; ``auto`` choices resolved by preset and engine."""
    return RolloutConfig(
        engine=args.rollout_engine, weight_bucket_mb=args.rollout_weight_bucket_mb,
        gpu_memory_utilization=args.rollout_gpu_memory_utilization,
        tensor_parallel_size=args.rollout_tensor_parallel_size, batch_size=args.rollout_batch_size, n_samples_per_prompt=args.n_samples_per_prompt,
        temperature=args.rollout_temperature, top_p=args.rollout_top_p, top_k=args.rollout_top_k,
        max_response_len=args.rollout_max_response_len, hpt_gate=args.hpt_gate,
        max_rollout_rounds=args.max_rollout_rounds,
        hpt_mode=args.hpt_mode or ("switch" if args.loss_preset.startswith("hpt") else "off"),
        old_logprobs=_auto_old_logprobs(args.rollout_engine)
        if args.rollout_logprobs == "auto" else args.rollout_logprobs)


def _auto_old_logprobs(engine: str) -> str:
    """``--rollout-logprobs auto``: the engine's own log-probs when it decodes with the training
    model, else a recompute (another engine's kernels and precision differ from training's)."""
    spec = ENGINES.get(engine)
    return "engine" if spec is not None and spec.engine.shares_training_weights else "recompute"


def uses_demonstrations(cfg) -> bool:
    """Whether the RL task adds one demonstration row per prompt: the preset trains on demos
    (SFT term or off-policy demo term) or HPT's gate may send a prompt to its SFT branch."""
    return cfg.loss.sft_coef > 0 or cfg.loss.demo_rl_coef > 0 or cfg.loss.mixed_group


def rows_per_rollout(cfg) -> int:
    """Rows of one RL rollout batch: per prompt its n rollouts and, if used, its demonstration."""
    ro = cfg.rollout
    return ro.batch_size * (ro.n_samples_per_prompt + int(uses_demonstrations(cfg)))


def rl_config_errors(cfg, pp: int, dp: int) -> List[str]:
    """What keeps an RL run (any preset but sft) from starting, one message per problem."""
    errors: List[str] = []
    ro = cfg.rollout
    try:
        check_engine_available(ro.engine)
    except (ImportError, ValueError) as e:
        errors.append(str(e))
    if ro.engine in ENGINES and not engine_spec(ro.engine).pipeline_parallel and pp > 1:
        others = [n for n, spec in ENGINES.items() if spec.pipeline_parallel]
        errors.append(f"--rollout-engine {ro.engine} decodes with the training model, which "
                      "needs --pipeline-model-parallel-size 1; use --rollout-engine "
                      + " or ".join(others))
    if ro.engine in ENGINES:
        tp, cp = cfg.parallel.tensor_model_parallel_size, cfg.parallel.context_parallel_size
        errors += rollout_layout_errors(tp * cp * pp * max(dp, 1), tp,
                                        rollout_tensor_parallel_size(cfg),
                                        engine_spec(ro.engine).engine.shares_training_weights,
                                        ro.engine, ro.batch_size)
    if ro.batch_size % max(dp, 1):
        errors.append(f"--rollout-batch-size {ro.batch_size} is not divisible by the "
                      f"data-parallel size {dp} (each DP rank rolls out its own prompts)")
    rows = rows_per_rollout(cfg)
    per_prompt = ro.n_samples_per_prompt + int(uses_demonstrations(cfg))
    updates = rows // cfg.global_batch_size if cfg.global_batch_size else 0
    if not updates or rows % cfg.global_batch_size or (ro.batch_size // max(dp, 1)) % updates:
        errors.append(f"--global-batch-size {cfg.global_batch_size} must be the rows of one "
                      f"rollout batch, --rollout-batch-size x (--n-samples-per-prompt"
                      f"{' + 1 demonstration' if uses_demonstrations(cfg) else ''}) = {rows}, "
                      f"or that divided by a number of updates that divides each DP rank's "
                      f"prompts (mini-batches of whole groups of {per_prompt} rows); drop the "
                      f"flag for one update per rollout batch")
    if ro.max_rollout_rounds < 1:
        errors.append(f"--max-rollout-rounds {ro.max_rollout_rounds} must be >= 1")
    if ro.hpt_mode == "soft" and cfg.loss.demo_rl_coef == 0:
        errors.append("--hpt-mode soft trains the demonstrations off-policy too: add "
                      "--loss-demo-rl-coef 1")
    return errors
