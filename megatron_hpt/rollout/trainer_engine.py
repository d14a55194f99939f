"""The rollout engine as a training loop holds it: built from the training config, fed the
current weights before each rollout phase, put to sleep after it.

    engine = TrainerEngine(cfg, model, tokenizer)
    samples = engine.generate(prompt_ids, n, sampling)   # syncs weights first if they changed
    ...optimizer step...
    engine.weights_changed()

``embedded`` decodes with the training model itself (nothing to sync). ``vllm`` starts a
colocated vLLM (TP = ``--rollout-tensor-parallel-size``, default the training TP; external
launcher: consecutive ranks form one engine, rollout/assignment.py) from the HF config of the model, with dummy
weights, and receives the Megatron weights through ``export_hf_weights`` in buckets of
``--rollout-weight-bucket-mb`` before each rollout phase; between phases it sleeps (GPU only).
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from megatron_hpt.rollout.assignment import rollout_tensor_parallel_size
from megatron_hpt.rollout.engines import engine_for_policy
from megatron_hpt.rollout.protocol import RolloutSample, SamplingParams
from megatron_hpt.rollout.vllm_engine import shape_config_dir, vllm_dtype  # noqa: F401 (re-export)


class TrainerEngine:
    """A rollout engine plus the bookkeeping of whose weights it serves."""

    def __init__(self, cfg, model_chunks: Sequence[torch.nn.Module], tokenizer):
        self.cfg, self.model_chunks = cfg, list(model_chunks)
        self.name = cfg.rollout.engine
        # --hf-model gives config and tokenizer files; a flag-built shape gets its config
        self.engine = engine_for_policy(
            self.name, self.model_chunks, cfg.shape, tokenizer,
            tensor_parallel_size=rollout_tensor_parallel_size(cfg), seed=cfg.seed,
            max_model_len=cfg.seq_length + 1, params_dtype=cfg.params_dtype, hf_dir=cfg.hf_model,
            gpu_memory_utilization=cfg.rollout.gpu_memory_utilization)
        # an engine on the training parameters has nothing to sync; any other starts with
        # placeholder weights until the first stream
        self._stale = not self.engine.shares_training_weights

    def weights_changed(self) -> None:
        """Call after each optimizer step: the next ``generate`` streams the new weights."""
        if not self.engine.shares_training_weights:
            self._stale = True

    def generate(self, prompt_token_ids: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> List[RolloutSample]:
        if self._stale:
            from megatron_hpt.rollout.weights import export_hf_weights
            self.engine.update_weights(export_hf_weights(
                self.model_chunks, self.cfg.shape, self.cfg.rollout.weight_bucket_mb))
            self._stale = False
        self.engine.wake_up()
        try:
            return self.engine.generate(prompt_token_ids, n, sampling)
        finally:
            self.engine.sleep()

    def shutdown(self) -> None:
        """Release the engine (vLLM: its engine core); the training process groups stay."""
        self.engine.shutdown()
