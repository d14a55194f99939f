"""What a run trains on: the data source, its loss and its normalizers, behind one small interface.

A task gives the loop, per iteration, this rank's micro-batches (``micro_batches``), the loss
function and its normalizers (``loss_fn``, ``attach_normalizers``), and hooks for after the
optimizer step, evaluation and the end of the run.

``SftTask`` trains next-token prediction on demonstrations with the loss head (``--loss-preset
sft``: π_ref = sg(π_θ), Â ≡ 1, token-mean NLL). Every other preset runs ``RlTask`` (rl/task.py):
rollouts, rewards, the HPT gate and advantages. Both read prompts from ``data/prompts.py``
(built-in arithmetic or a data file).
"""
from __future__ import annotations

from typing import Dict, List

import torch

from megatron_hpt import platform
from megatron_hpt.arguments import TrainingConfig
from megatron_hpt.data.prompts import BUILTIN, PromptSource
from megatron_hpt.data.rows import sft_rows
from megatron_hpt.loss.batch import Batch
from megatron_hpt.rollout.engines import engine_spec
from megatron_hpt.training.batches import split_for_rank
from megatron_hpt.training.held_out import greedy_accuracy
from megatron_hpt.training.loss_head import LossHead


class SftTask:
    """Supervised fine-tuning on (prompt, demonstration) pairs."""

    def __init__(self, cfg: TrainingConfig, tokenizer, model, source: PromptSource):
        self.cfg, self.tokenizer, self.model, self.source = cfg, tokenizer, model, source
        self.loss_fn = LossHead(cfg.loss)
        self._engine = None  # built at the first evaluation

    def global_batch(self, iteration: int) -> Batch:
        """The same rows on every rank and layout: a pure function of (seed, iteration); CPU."""
        n = self.cfg.global_batch_size
        items = self.source.items(iteration * n, n)
        rows = sft_rows(self.tokenizer, [it.prompt_ids for it in items],
                        [it.demonstration for it in items], self.cfg.seq_length,
                        source=self.cfg.data_path)
        return rows.replace(is_demo=torch.ones(n, dtype=torch.bool))  # every row is a demo

    def micro_batches(self, iteration: int) -> List[Batch]:
        """This DP rank's share of the global batch, moved to the device once, cut into
        micro-batches (fixed size, or by token budget: training/packing.py)."""
        from megatron_hpt.training import packing
        rows = split_for_rank(self.global_batch(iteration), 1 << 62, device=platform.device())[0]
        return packing.micro_batches(rows, self.cfg)

    def attach_normalizers(self, micro_batches: List[Batch]) -> None:
        """SPEC §6: global denominators, computed once per step, shared by all micro-batches."""
        self.loss_fn.attach_normalizers(micro_batches)

    def after_step(self) -> Dict[str, float]:
        if self._engine is not None:
            self._engine.weights_changed()
        return {}

    def evaluate(self, model, num_problems: int = 64) -> Dict[str, float]:
        """Greedy accuracy on held-out problems (PP = 1 for an engine on the training model)."""
        from megatron.core import parallel_state
        if not engine_spec(self.cfg.rollout.engine).pipeline_parallel and \
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


def build_task(cfg: TrainingConfig, tokenizer, model, source: PromptSource):
    if cfg.loss_preset == "sft":
        return SftTask(cfg, tokenizer, model, source)
    from megatron_hpt.training.rl.task import RlTask
    return RlTask(cfg, tokenizer, model, source)
