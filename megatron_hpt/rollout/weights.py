"""Live megatron-core weights -> Hugging Face names and full shapes, in buckets, for rollout engines.

``export_hf_weights(model_chunks, shape, bucket_mb)`` yields lists of ``(hf_name, tensor)`` whose
total size is at most ``bucket_mb`` MiB (a single larger tensor comes alone in its own bucket).
Every HF tensor of the model is yielded exactly once, in HF order (embedding, layers ascending,
final norm, ``lm_head`` only when the HF model has it untied), with the full shape and the
parameter dtype. The same stream feeds every engine: the embedded engine's loader and vLLM's
``model.load_weights(weights=iter(bucket))``.

Who receives what, and what moves (per tensor; the family table of ``megatron_hpt.conversion``
says how each tensor is split over TP and rebuilt):

- TP: the ranks of a stage all_gather their shards over the TP group (replicated tensors such as
  norms do not move), merge them (``tp_merge``: fc1 regroups gate and up) and convert to HF.
- PP: each stage's tensors are broadcast over the PP group from that stage, so EVERY rank of the
  model-parallel group (TP x PP) receives EVERY tensor; DP replicas run the same collectives in
  their own TP/PP groups, so every rank of the job ends up with the full stream. Before the
  tensors, one all_gather_object over the PP group exchanges each stage's (name, shape, dtype).
- Collective: all ranks must iterate the generator to the end, in step.

Tensors may share memory with the live parameters (no TP, no PP, direct mapping): consumers copy
them (as ``load_weights`` does) before the next optimizer step.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from megatron_hpt.conversion.mapping import Mapping, tp_merge
from megatron_hpt.conversion.names import layer_mappings
from megatron_hpt.conversion.registry import mapping_for
from megatron_hpt.models.shape import ModelShape
from megatron_hpt.models.unwrap import unwrap_model

Bucket = List[Tuple[str, torch.Tensor]]


_unwrap = unwrap_model  # the package's one unwrapper (models/unwrap.py)


def _local_entries(chunk, shape: ModelShape, spec: Optional[str]) -> List[Tuple[int, Mapping, torch.Tensor]]:
    """(global layer or None, mapping, local TP shard) for the parameters of one model chunk."""
    arch = mapping_for(shape.hf_model_type or "llama")
    model_level = arch.model_entries(shape)
    by_spec_name = layer_mappings(arch, spec)  # local and/or Transformer Engine spellings
    chunk = _unwrap(chunk)
    out = []
    for name, param in chunk.named_parameters():
        if name in model_level:
            out.append((None, model_level[name], param.detach()))
        elif name.startswith("decoder.layers."):
            local, rest = name[len("decoder.layers."):].split(".", 1)
            if rest not in by_spec_name:
                raise KeyError(f"parameter {name!r} has no entry in the {arch.model_type} table "
                               f"({spec or 'local or te'} spec)")
            layer = chunk.decoder.layers[int(local)].layer_number - 1  # global, PP/VPP offsets included
            out.append((layer, by_spec_name[rest], param.detach()))
        elif name == "output_layer.weight":
            continue  # tied: the HF model has no lm_head.weight (the embedding is exported)
        else:
            raise KeyError(f"parameter {name!r} has no entry in the {arch.model_type} table")
    embedding = model_level["embedding.word_embeddings.weight"]
    first = [e for e in out if e[1] is embedding]
    last = [e for e in out if e[0] is None and e[1] is not embedding]
    layers = [e for e in out if e[0] is not None]
    layers.sort(key=lambda e: (e[0], list(arch.layer.values()).index(e[1])))  # table order in a layer
    return first + layers + last


def _full_megatron_tensor(mapping: Mapping, shard: torch.Tensor, tp_group, tp_size: int) -> torch.Tensor:
    """All_gather over the TP group (TP-split tensors only) and merge into the full tensor."""
    if mapping.tp is None or tp_size == 1:
        return shard
    parts = [torch.empty_like(shard) for _ in range(tp_size)]
    dist.all_gather(parts, shard.contiguous(), group=tp_group)
    return tp_merge(parts, mapping)


def _parallel_groups():
    """(tp group, tp size, pp group, pp ranks, my pp stage); trivial without torch.distributed."""
    if not dist.is_initialized():
        return None, 1, None, [0], 0
    from megatron.core import parallel_state as ps
    pp_group = ps.get_pipeline_model_parallel_group()
    return (ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_world_size(), pp_group,
            dist.get_process_group_ranks(pp_group), ps.get_pipeline_model_parallel_rank())


def export_hf_weights(model_chunks: Sequence[torch.nn.Module] | torch.nn.Module, shape: ModelShape,
                      bucket_mb: float = 512, spec: Optional[str] = None) -> Iterator[Bucket]:
    """Yield buckets of ``(hf_name, full tensor)``; see the module docstring for what moves.

    ``model_chunks``: this rank's model chunks (one per virtual pipeline stage, possibly wrapped in
    megatron DDP); ``shape``: the model's ``ModelShape`` (``hf_model_type`` picks the table);
    ``spec``: ``local`` or ``te`` parameter names only; None (default) takes either spelling, so
    the same call serves a model built with the local or the Transformer Engine spec.
    """
    if isinstance(model_chunks, torch.nn.Module):
        model_chunks = [model_chunks]
    tp_group, tp_size, pp_group, pp_ranks, my_stage = _parallel_groups()
    # receive buffers of other stages live where this stage's weights do (NCCL: the device)
    device = next(p for c in model_chunks for p in c.parameters()).device
    limit = int(bucket_mb * 2 ** 20)
    # what this rank's stage exports, per chunk: HF (name, shape, dtype), known before any data moves
    local = [_local_entries(c, shape, spec) for c in model_chunks]
    header = [[[(n, tuple(s), e[2].dtype) for n, s in zip(e[1].hf_names(e[0]), e[1].hf_shapes(shape))]
               for e in chunk] for chunk in local]
    headers = [header]
    if len(pp_ranks) > 1:
        headers = [None] * len(pp_ranks)
        dist.all_gather_object(headers, header, group=pp_group)
    bucket: Bucket = []
    size = 0
    for c in range(len(model_chunks)):  # virtual stages in model order: chunk-major, then stage
        for stage, stage_header in enumerate(headers):
            for i, hf_meta in enumerate(stage_header[c]):
                if stage == my_stage:
                    layer, mapping, shard = local[c][i]
                    full = _full_megatron_tensor(mapping, shard, tp_group, tp_size)
                    tensors = mapping.to_hf(full, shape)
                else:
                    tensors = [torch.empty(s, dtype=dt, device=device) for _, s, dt in hf_meta]
                if len(pp_ranks) > 1:
                    for t in tensors:
                        dist.broadcast(t, src=pp_ranks[stage], group=pp_group)
                for (name, _, _), t in zip(hf_meta, tensors):
                    nbytes = t.numel() * t.element_size()
                    if bucket and size + nbytes > limit:
                        yield bucket
                        bucket, size = [], 0
                    bucket.append((name, t))
                    size += nbytes
    if bucket:
        yield bucket


def hf_weight_shapes(shape: ModelShape) -> Dict[str, Tuple[int, ...]]:
    """Every name and shape the export stream yields for ``shape`` (the HF model's parameters)."""
    return mapping_for(shape.hf_model_type or "llama").hf_expected(shape)
