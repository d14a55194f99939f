"""The one model builder: this rank's pipeline stage of a ``ModelShape`` at a parallel layout.
The trainer's policy (then DDP-wrapped), its frozen reference and the evaluation tool's policy
are all built here."""
from __future__ import annotations

from typing import Optional, Tuple

from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig

from megatron_hpt.models.provider import build_gpt_model, transformer_config
from megatron_hpt.models.shape import ModelShape


def build_model_stage(shape: ModelShape, model_kwargs: Optional[dict] = None,
                      **parallel_and_precision) -> Tuple[GPTModel, TransformerConfig]:
    """(model, config): the ``GPTModel`` of this rank's pipeline stage (embedding on the first,
    output layer on the last; both at PP = 1) and its ``TransformerConfig``.
    ``parallel_and_precision``: the ``ModelParallelConfig`` fields (``arguments.model_parallel_kwargs``);
    ``model_kwargs``: further ``build_gpt_model`` arguments. Needs megatron's parallel state
    (``training/distributed.initialize``)."""
    config = transformer_config(shape, **parallel_and_precision)
    model = build_gpt_model(shape, config, pre_process=parallel_state.is_pipeline_first_stage(),
                            post_process=parallel_state.is_pipeline_last_stage(),
                            **(model_kwargs or {}))
    return model, config
