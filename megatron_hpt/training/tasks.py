"""What a run trains on: the data source, its loss and its normalizers, behind one small interface.

A task gives the loop, per iteration, this rank's micro-batches (``micro_batches``), the loss
function and its normalizers (``loss_fn``, ``attach_normalizers``), and hooks for after the
optimizer step, evaluation and the end of the run.

``SftTask`` trains next-token prediction on demonstrations (the built-in arithmetic task) with the
loss head (``--loss-preset sft``: π_ref = sg(π_θ), Â ≡ 1, token-mean NLL). Every other preset runs
``RlTask`` (rl_task.py): rollouts, rewards, the HPT gate and advantages.
"""
from __future__ import annotations

from typing import Dict, List

import torch

from megatron_hpt.arguments import ConfigError, TrainingConfig
from megatron_hpt.data import arithmetic
from megatron_hpt.data.sft_batch import sft_rows
from megatron_hpt.training.batches import split_for_rank
from megatron_hpt.training.loss_head import LossHead


#: held-out problems come from another seed stream than the training problems
EVAL_SEED_OFFSET = 1_000_003


def greedy_accuracy(engine, cfg: TrainingConfig, tokenizer, num_problems: int = 64) -> Dict[str, float]:
    """Greedy accuracy on held-out builtin problems, decoded by the run's rollout engine."""
    from megatron_hpt.rollout import SamplingParams
    ps = arithmetic.problems(cfg.seed + EVAL_SEED_OFFSET, 0, num_problems)
    prompts = [[tokenizer.bos_token_id] + tokenizer.encode(p.prompt, add_special_tokens=False)
               for p in ps]
    samples = engine.generate(prompts, 1, SamplingParams(
        temperature=0.0, max_new_tokens=cfg.seq_length + 1 - max(map(len, prompts)),
        eos_token_ids=(tokenizer.eos_token_id,)))
    answers = [arithmetic.extract_answer(tokenizer.decode(s.response_token_ids, skip_special_tokens=True))
               for s in samples]
    return {"eval greedy accuracy": sum(a == p.answer for a, p in zip(answers, ps)) / len(ps)}


class SftTask:
    """Supervised fine-tuning on (prompt, demonstration) pairs."""

    def __init__(self, cfg: TrainingConfig, tokenizer, model):
        if cfg.data_path != "builtin:arithmetic":
            raise ConfigError(f"--data-path {cfg.data_path!r}: SFT currently reads builtin:arithmetic")
        self.cfg, self.tokenizer, self.model = cfg, tokenizer, model
        self.loss_fn = LossHead(cfg.loss)
        self._engine = None  # built at the first evaluation

    def global_batch(self, iteration: int) -> Dict[str, torch.Tensor]:
        """The same rows on every rank and layout: a pure function of (seed, iteration)."""
        n = self.cfg.global_batch_size
        ps = arithmetic.problems(self.cfg.seed, iteration * n, n)
        rows = sft_rows(self.tokenizer, [p.prompt for p in ps], [p.solution for p in ps],
                        self.cfg.seq_length, source="builtin:arithmetic")
        rows["is_demo"] = torch.ones(n, dtype=torch.bool)  # every row is a demonstration
        return rows

    def micro_batches(self, iteration: int) -> List[Dict[str, torch.Tensor]]:
        """This DP rank's share of the global batch, cut into micro-batches."""
        return split_for_rank(self.global_batch(iteration), self.cfg.micro_batch_size)

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


def build_task(cfg: TrainingConfig, tokenizer, model):
    if cfg.loss_preset == "sft":
        return SftTask(cfg, tokenizer, model)
    from megatron_hpt.training.rl_task import RlTask
    return RlTask(cfg, tokenizer, model)
