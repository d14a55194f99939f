"""Megatron's performance flags: interleaved pipelining, recompute, overlapped parameter gather.

The flags are declared in ``arguments.py`` with Megatron-LM's names; this module checks them and
``arguments.model_parallel_kwargs`` / ``training/setup.py`` hand them to megatron-core
(``TransformerConfig.recompute_*``, ``virtual_pipeline_model_parallel_size``,
``DistributedDataParallelConfig.overlap_param_gather``).
"""
from __future__ import annotations

from typing import List, Optional


def performance_flag_errors(cfg, pp: int, num_microbatches: int) -> List[str]:
    """What is wrong with the performance flags of ``cfg`` (messages name the flags);
    ``num_microbatches``: micro-batches per optimizer step on each data-parallel rank."""
    par, e = cfg.parallel, []
    vpp = par.virtual_pipeline_model_parallel_size
    if vpp is not None:
        if pp <= 2:
            # with two stages the previous and next stage are the same rank, and the interleaved
            # schedule's batched send-forward/send-backward to it can be matched to the peer's
            # receives in the wrong order (seen on gloo: activations and gradients of the same
            # shape swapped silently); Megatron-LM refused PP <= 2 with interleaving for this
            e.append("--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size > 2")
        if num_microbatches % pp:
            e.append(f"interleaved pipelining needs the micro-batches per step "
                     f"({num_microbatches}) to be a multiple of PP={pp}")
    if par.overlap_param_gather and not par.use_distributed_optimizer:
        e.append("--overlap-param-gather needs --use-distributed-optimizer")
    if par.recompute_granularity == "full" and not (par.recompute_method and par.recompute_num_layers):
        e.append("--recompute-granularity full needs --recompute-method and --recompute-num-layers")
    if par.recompute_granularity != "full" and (par.recompute_method or par.recompute_num_layers):
        e.append("--recompute-method/--recompute-num-layers go with --recompute-granularity full")
    if cfg.keep_last is not None and (cfg.keep_last < 1 or not cfg.save):
        e.append("--keep-last N needs N >= 1 and --save DIR")
    return e


def virtual_pipeline_size(n: Optional[int], shape, pp: int) -> Optional[int]:
    """Model chunks per stage from --num-layers-per-virtual-pipeline-stage (None: not interleaved)."""
    if n is None:
        return None
    per_stage = shape.num_layers // max(pp, 1)
    if n < 1 or shape.num_layers % pp or per_stage % n or per_stage // n < 2:
        raise ValueError(f"--num-layers-per-virtual-pipeline-stage {n} must divide the "
                          f"{shape.num_layers}/{pp} layers per pipeline stage into >= 2 chunks")
    return per_stage // n
