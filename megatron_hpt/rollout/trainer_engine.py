"""The rollout engine as a training loop holds it: built from the training config, fed the
current weights before each rollout phase, put to sleep after it.

    engine = TrainerEngine(cfg, model, tokenizer)
    samples = engine.generate(prompt_ids, n, sampling)   # syncs weights first if they changed
    ...optimizer step...
    engine.weights_changed()

``embedded`` decodes with the training model itself (nothing to sync). ``vllm`` starts a
colocated vLLM (TP = training TP, external launcher) from the HF config of the model, with dummy
weights, and receives the Megatron weights through ``export_hf_weights`` in buckets of
``--rollout-weight-bucket-mb`` before each rollout phase; between phases it sleeps (GPU only).
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import List, Sequence

import torch
from megatron.core import parallel_state

from megatron_hpt.rollout.engines import build_engine
from megatron_hpt.rollout.protocol import RolloutSample, SamplingParams


def vllm_dtype(params_dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[params_dtype]


def shape_config_dir(shape, tokenizer, params_dtype: torch.dtype) -> str:
    """A private directory with the HF config.json of ``shape`` (special token ids from the
    tokenizer): what vLLM needs to start with dummy weights that the weight stream replaces."""
    from megatron_hpt.models.hf_config import hf_config_from_shape
    config = hf_config_from_shape(shape, base=dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype=vllm_dtype(params_dtype)))
    path = tempfile.mkdtemp(prefix="megatron_hpt_vllm_")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return path


class TrainerEngine:
    """A rollout engine plus the bookkeeping of whose weights it serves."""

    def __init__(self, cfg, model_chunks: Sequence[torch.nn.Module], tokenizer):
        self.cfg, self.model_chunks = cfg, list(model_chunks)
        self.name = cfg.rollout.engine
        if self.name == "embedded":
            self.engine = build_engine("embedded", model=self.model_chunks[0],
                                       pad_token_id=tokenizer.pad_token_id,
                                       max_sequence_length=cfg.seq_length + 1)
            self._stale = False  # decodes with the training parameters themselves
        else:
            if not torch.cuda.is_available():
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            # --hf-model gives config and tokenizer files; a flag-built shape gets its config
            hf_dir = cfg.hf_model or shape_config_dir(cfg.shape, tokenizer, cfg.params_dtype)
            self.engine = build_engine(
                "vllm", hf_dir=hf_dir,
                tensor_parallel_size=cfg.parallel.tensor_model_parallel_size, seed=cfg.seed,
                max_model_len=cfg.seq_length + 1, dtype=vllm_dtype(cfg.params_dtype),
                load_format="dummy",
                gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                enforce_eager=not torch.cuda.is_available())
            self._stale = True  # dummy weights until the first stream

    def weights_changed(self) -> None:
        """Call after each optimizer step: the next ``generate`` streams the new weights."""
        if self.name != "embedded":
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
        if self.name != "embedded":
            self.engine.shutdown()

    def data_parallel_seed(self, base: int, iteration: int) -> int:
        """Sampling seed of this DP replica at ``iteration``: TP ranks agree, DP replicas differ."""
        dp = parallel_state.get_data_parallel_rank()
        return (base * 1_000_003 + iteration * 1_009 + dp) % (2 ** 31)
