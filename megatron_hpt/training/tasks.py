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


#: held-out problems come from another seed stream than the training problems
EVAL_SEED_OFFSET = 1_000_003


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


    def evaluate(self, model, num_problems: int = 64) -> Dict[str, float]:
        """Greedy accuracy on held-out problems, decoded by the embedded engine (PP = 1 only)."""
        from megatron.core import parallel_state
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            return {}
        from megatron_hpt.rollout import SamplingParams, build_engine
        ps = arithmetic.problems(self.cfg.seed + EVAL_SEED_OFFSET, 0, num_problems)
        tok = self.tokenizer
        prompts = [[tok.bos_token_id] + tok.encode(p.prompt, add_special_tokens=False) for p in ps]
        engine = build_engine("embedded", model=model[0], pad_token_id=tok.pad_token_id)
        samples = engine.generate(prompts, 1, SamplingParams(
            temperature=0.0, max_new_tokens=self.cfg.seq_length - max(map(len, prompts)),
            eos_token_ids=(tok.eos_token_id,)))
        answers = [arithmetic.extract_answer(tok.decode(s.response_token_ids, skip_special_tokens=True))
                   for s in samples]
        return {"eval greedy accuracy": sum(a == p.answer for a, p in zip(answers, ps)) / len(ps)}

    def finish(self, model) -> Dict[str, float]:
        return self.evaluate(model)


def build_task(cfg: TrainingConfig, tokenizer):
    return SftTask(cfg, tokenizer)
