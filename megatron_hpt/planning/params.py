"""Exact parameter counts per rank, from the real megatron-core ``GPTModel`` built on the meta device.

A pipeline stage holds ``num_layers / PP`` layers, the embedding on the first stage and the final
norm + output layer on the last (with tied embeddings and PP > 1 the last stage holds its own copy
of the output weight, as megatron-core does). The stage is built once, at TP = 1, on
``torch.device("meta")`` (no memory, ~0.1 s) by the project's own ``build_gpt_model``; every
parameter megatron marks ``tensor_model_parallel`` is split evenly over TP ranks (megatron requires
the sizes to divide), the others (norm weights) are replicated. Megatron pads nothing here: the
vocabulary is padded once in the model shape. ``tests/training/test_plan.py`` compares the result
with a real CPU build at TP=2/PP=2.

Building a megatron-core model needs its process groups; a private one-process gloo world is
started for the count and torn down after, so this must not run inside an initialized run.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from megatron_hpt.models.shape import ModelShape


@dataclass(frozen=True)
class StageParams:
    split: int
    """Elements of the TP-split parameters of the whole stage (divide by TP for one rank)."""
    replicated: int
    """Elements of parameters every TP rank holds in full (norm weights)."""

    def per_rank(self, tp: int) -> int:
        """Parameters held by one TP rank of this stage."""
        if self.split % tp:
            raise ValueError(f"TP-split parameters ({self.split}) are not divisible by TP={tp}")
        return self.split // tp + self.replicated


_CACHE: Dict[Tuple, StageParams] = {}


@contextlib.contextmanager
def _one_rank_world():
    import torch.distributed as dist
    from megatron.core import parallel_state
    if dist.is_initialized():
        raise RuntimeError("parameter counting builds its own one-rank world; call it before "
                           "torch.distributed is initialized (tools/plan.py does)")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        parallel_state.initialize_model_parallel()
        yield
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def _count_stage(shape: ModelShape, layers: int, pre: bool, post: bool) -> StageParams:
    from megatron_hpt.models.provider import build_gpt_model, transformer_config
    stage_shape = dataclasses.replace(shape, num_layers=layers)
    with torch.device("meta"):
        config = transformer_config(stage_shape, use_cpu_initialization=True,
                                    perform_initialization=True, params_dtype=torch.bfloat16)
        model = build_gpt_model(stage_shape, config, pre_process=pre, post_process=post,
                                transformer_impl="local")
    split = replicated = 0
    for p in model.parameters():
        if getattr(p, "tensor_model_parallel", False):
            split += p.numel()
        else:
            replicated += p.numel()
    return StageParams(split, replicated)


def stage_params(shape: ModelShape, pp: int, stage: int) -> StageParams:
    """Parameters of pipeline stage ``stage`` of ``pp`` (layers split evenly, as validate() requires)."""
    if shape.num_layers % pp:
        raise ValueError(f"num_layers {shape.num_layers} is not divisible by PP={pp}")
    layers, pre, post = shape.num_layers // pp, stage == 0, stage == pp - 1
    key = (shape.to_json(), layers, pre, post)
    if key not in _CACHE:
        with _one_rank_world():
            _CACHE[key] = _count_stage(shape, layers, pre, post)
    return _CACHE[key]


def params_per_rank(shape: ModelShape, tp: int, pp: int, stage: int) -> int:
    """Parameters held by one rank of (TP rank any, PP stage ``stage``)."""
    return stage_params(shape, pp, stage).per_rank(tp)


def total_params(shape: ModelShape) -> int:
    """Parameters of the whole model (one copy; tied weights counted once)."""
    return stage_params(shape, 1, 0).per_rank(1)


def prefetch(shape: ModelShape, pps) -> None:
    """Count every stage kind for the given PP sizes inside one one-rank world (faster search)."""
    todo = []
    for pp in pps:
        if shape.num_layers % pp:
            continue
        for stage in {0, pp - 1}:
            layers, pre, post = shape.num_layers // pp, stage == 0, stage == pp - 1
            key = (shape.to_json(), layers, pre, post)
            if key not in _CACHE:
                todo.append((key, layers, pre, post))
        if pp > 2:  # middle stages
            key = (shape.to_json(), shape.num_layers // pp, False, False)
            if key not in _CACHE:
                todo.append((key, shape.num_layers // pp, False, False))
    if todo:
        with _one_rank_world():
            for key, layers, pre, post in todo:
                if key not in _CACHE:
                    _CACHE[key] = _count_stage(shape, layers, pre, post)
