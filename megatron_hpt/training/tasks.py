"""What a run trains on: the data source, its loss and its normalizers, behind one small interface.

A task gives the loop, per iteration, this rank's micro-batches (``micro_batches``), the loss
function and its normalizers (``loss_fn``, ``attach_normalizers``), and hooks for after the
optimizer step, evaluation and the end of the run.

``SftTask`` trains next-token prediction on demonstrations with the loss head (``--loss-preset
sft``: π_ref = sg(π_θ), Â ≡ 1, token-mean NLL). Every other preset runs ``RlTask`` (rl_task.py):
rollouts, rewards, the HPT gate and advantages. Both read prompts from ``data/prompts.py``
(built-in arithmetic or a data file).
"""
from __future__ import annotations

from typing import Dict, List

import torch

from megatron_hpt.arguments import ConfigError, TrainingConfig
from megatron_hpt.data.prompts import BUILTIN, HELD_OUT_SEED_OFFSET, PromptSource
from megatron_hpt.data.records import DataError
from megatron_hpt.data.sft_batch import sft_rows
from megatron_hpt.rewards import reward_fn
from megatron_hpt.training.batches import split_for_rank
from megatron_hpt.training.loss_head import LossHead


def prompt_source(cfg: TrainingConfig, tokenizer, path: str, seed: int,
                  need_demonstrations: bool = False) -> PromptSource:
    try:
        return PromptSource(path, tokenizer, seed, cfg.data_skip_bad_rows, need_demonstrations)
    except DataError as e:
        raise ConfigError(str(e)) from e


def greedy_accuracy(engine, cfg: TrainingConfig, tokenizer, num_problems: int = 64) -> Dict[str, float]:
    """Greedy accuracy on held-out prompts (``--eval-data-path``, else held-out builtin problems),
    decoded by the run's rollout engine and graded by the run's reward."""
    from megatron_hpt.rollout import SamplingParams
    path = cfg.eval_data_path or BUILTIN
    source = prompt_source(cfg, tokenizer, path, cfg.seed + HELD_OUT_SEED_OFFSET)
    from megatron_hpt.training.preflight import check_prompts
    check_prompts(source, tokenizer, cfg.seq_length, path, cfg.data_skip_bad_rows)
    if not source.builtin:
        num_problems = len(source.records)
    items = source.items(0, num_problems)
    room = cfg.seq_length + 1 - max(len(it.prompt_ids) for it in items)
    if room < 1:
        raise ConfigError(f"{path}: a prompt is longer than --seq-length {cfg.seq_length}")
    samples = engine.generate([it.prompt_ids for it in items], 1, SamplingParams(
        temperature=0.0, max_new_tokens=room, eos_token_ids=(tokenizer.eos_token_id,)))
    grade = reward_fn(cfg.reward_type or source.default_reward, cfg.reward_timeout)
    correct = [grade(tokenizer.decode(s.response_token_ids, skip_special_tokens=True),
                     items[s.prompt_index].answer) for s in samples]
    return {"eval greedy accuracy": sum(correct) / len(correct)}


class SftTask:
    """Supervised fine-tuning on (prompt, demonstration) pairs."""

    def __init__(self, cfg: TrainingConfig, tokenizer, model, source: PromptSource):
        self.cfg, self.tokenizer, self.model, self.source = cfg, tokenizer, model, source
        self.loss_fn = LossHead(cfg.loss)
        self._engine = None  # built at the first evaluation

    def global_batch(self, iteration: int) -> Dict[str, torch.Tensor]:
        """The same rows on every rank and layout: a pure function of (seed, iteration)."""
        n = self.cfg.global_batch_size
        items = self.source.items(iteration * n, n)
        rows = sft_rows(self.tokenizer, [it.prompt_ids for it in items],
                        [it.demonstration for it in items], self.cfg.seq_length,
                        source=self.cfg.data_path)
        rows["is_demo"] = torch.ones(n, dtype=torch.bool)  # every row is a demonstration
        return rows

    def micro_batches(self, iteration: int) -> List[Dict[str, torch.Tensor]]:
        """This DP rank's share of the global batch, cut into micro-batches (fixed size, or by
        token budget: training/packing.py)."""
        from megatron_hpt.training import packing
        rows = split_for_rank(self.global_batch(iteration), 1 << 62)[0]
        return packing.micro_batches(rows, self.cfg)

    def attach_normalizers(self, micro_batches: List[Dict[str, torch.Tensor]]) -> None:
        """SPEC §6: global denominators, computed once per step, shared by all micro-batches."""
        self.loss_fn.attach_normalizers(micro_batches)

    def after_step(self) -> Dict[str, float]:
        if self._engine is not None:
            self._engine.weights_changed()
        return {}

    def evaluate(self, model, num_problems: int = 64) -> Dict[str, float]:
        """Greedy accuracy on held-out problems (PP = 1 for the embedded engine)."""
        from megatron.core import parallel_state
        if self.cfg.rollout.engine == "embedded" and \
                parallel_state.get_pipeline_model_parallel_world_size() > 1:
            return {}
        if self.cfg.data_path != BUILTIN and not self.cfg.eval_data_path:
            return {}
        if self._engine is None:
            from megatron_hpt.rollout.trainer_engine import TrainerEngine
            self._engine = TrainerEngine(self.cfg, model, self.tokenizer)
        return greedy_accuracy(self._engine, self.cfg, self.tokenizer, num_problems)

    def finish(self, model) -> Dict[str, float]:
        """End of the run: final evaluation, then the rollout engine is released."""
        try:
            return self.evaluate(model)
        finally:
            if self._engine is not None:
                self._engine.shutdown()


def read_training_prompts(cfg: TrainingConfig, tokenizer) -> PromptSource:
    """The run's prompt source, read and checked before anything is allocated (ConfigError
    naming file, row and field for a bad row)."""
    from megatron_hpt.rollout.config import uses_demonstrations
    need = cfg.loss_preset == "sft" or uses_demonstrations(cfg)
    from megatron_hpt.training.preflight import check_prompts
    source = prompt_source(cfg, tokenizer, cfg.data_path, cfg.seed, need_demonstrations=need)
    check_prompts(source, tokenizer, cfg.seq_length, cfg.data_path, cfg.data_skip_bad_rows, need)
    path = cfg.eval_data_path or BUILTIN  # held-out prompts of --eval-interval and the final eval
    check_prompts(prompt_source(cfg, tokenizer, path, cfg.seed), tokenizer, cfg.seq_length, path,
                  cfg.data_skip_bad_rows)
    if source.skipped:
        print(f" data: {cfg.data_path}: {len(source.records)} rows, {source.skipped} bad rows "
              "skipped (--data-skip-bad-rows)", flush=True)
    return source


def build_task(cfg: TrainingConfig, tokenizer, model, source: PromptSource):
    if cfg.loss_preset == "sft":
        return SftTask(cfg, tokenizer, model, source)
    from megatron_hpt.training.rl_task import RlTask
    return RlTask(cfg, tokenizer, model, source)
