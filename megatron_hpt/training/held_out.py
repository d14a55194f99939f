"""The trainer's held-out evaluation: greedy accuracy (avg@1 at T = 0, eval/evaluate.py) on
``--eval-data-path`` or held-out builtin problems, decoded by the run's rollout engine and graded
by the run's reward; and the one reader of a run's prompt files (errors as ConfigError)."""
from __future__ import annotations

from typing import Dict

from megatron_hpt.arguments import ConfigError, TrainingConfig
from megatron_hpt.data.prompts import BUILTIN, HELD_OUT_SEED_OFFSET, PromptSource
from megatron_hpt.data.records import DataError
from megatron_hpt.eval.evaluate import evaluate_items
from megatron_hpt.rewards import reward_fn
from megatron_hpt.rollout.protocol import SamplingParams


def prompt_source(cfg: TrainingConfig, tokenizer, path: str, seed: int,
                  need_demonstrations: bool = False) -> PromptSource:
    try:
        return PromptSource(path, tokenizer, seed, cfg.data_skip_bad_rows, need_demonstrations)
    except DataError as e:
        raise ConfigError(str(e)) from e


def greedy_accuracy(engine, cfg: TrainingConfig, tokenizer, num_problems: int = 64) -> Dict[str, float]:
    """Greedy accuracy on held-out prompts (``--eval-data-path``, else held-out builtin problems),
    decoded by the run's rollout engine and graded by the run's reward: the benchmark
    evaluation's avg@1 with one greedy sample per problem (a problem counts as correct when its
    reward is nonzero)."""
    path = cfg.eval_data_path or BUILTIN
    source = prompt_source(cfg, tokenizer, path, cfg.seed + HELD_OUT_SEED_OFFSET)
    if not source.builtin:
        num_problems = len(source.records)
    items = source.items(0, num_problems)
    room = cfg.seq_length + 1 - max(len(it.prompt_ids) for it in items)
    if room < 1:
        raise ConfigError(f"{path}: a prompt is longer than --seq-length {cfg.seq_length}")
    greedy = SamplingParams(temperature=0.0, max_new_tokens=room,
                            eos_token_ids=(tokenizer.eos_token_id,))
    grade = reward_fn(cfg.reward_type or source.default_reward, cfg.reward_timeout)
    result = evaluate_items(engine, tokenizer, items, 1, greedy, grade, (), path)
    return {"eval greedy accuracy": result.metrics["avg@1"]}
