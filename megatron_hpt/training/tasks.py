"""What a run trains on: the data source, its loss and its normalizers, behind one small interface.

``SftTask`` trains next-token prediction on demonstrations (the built-in arithmetic task, or a
verl/LUFFY parquet/JSONL via ``data/``) with the loss head (``--loss-preset sft``: π_ref = sg(π_θ), Â ≡ 1, token-mean NLL).
"""
from __future__ import annotations

from typing import Dict, List

import torch

from megatron_hpt.arguments import ConfigError, TrainingConfig
from megatron_hpt.data import arithmetic
from megatron_hpt.data.sft_batch import sft_rows
from megatron_hpt.training.loss_head import LossHead


class SftTask:
    """Supervised fine-tuning on (prompt, demonstration) pairs."""

    def __init__(self, cfg: TrainingConfig, tokenizer):
        if cfg.data_path != "builtin:arithmetic":
            raise ConfigError(f"--data-path {cfg.data_path!r}: SFT currently reads builtin:arithmetic")
        self.cfg, self.tokenizer = cfg, tokenizer
        self.loss_fn = LossHead(cfg.loss)

    def global_batch(self, iteration: int) -> Dict[str, torch.Tensor]:
        """The same rows on every rank and layout: a pure function of (seed, iteration)."""
        n = self.cfg.global_batch_size
        ps = arithmetic.problems(self.cfg.seed, iteration * n, n)
        rows = sft_rows(self.tokenizer, [p.prompt for p in ps], [p.solution for p in ps],
                        self.cfg.seq_length, source="builtin:arithmetic")
        rows["is_demo"] = torch.ones(n, dtype=torch.bool)  # every row is a demonstration
        return rows

    def attach_normalizers(self, micro_batches: List[Dict[str, torch.Tensor]]) -> None:
        """SPEC §6: global denominators, computed once per step, shared by all micro-batches."""
        self.loss_fn.attach_normalizers(micro_batches)


def build_task(cfg: TrainingConfig, tokenizer):
    return SftTask(cfg, tokenizer)
