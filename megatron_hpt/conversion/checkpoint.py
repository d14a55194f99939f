"""The Megatron checkpoint side of conversion: layout, a streaming writer, per-layer reads, loading.

Layout (Megatron-LM conventions)::

    SAVE/latest_checkpointed_iteration.txt   "release" or an iteration number
    SAVE/release/ or SAVE/iter_0000010/      megatron-core dist_checkpointing, torch_dist backend,
                                             of {"model": model.sharded_state_dict()}

Keys are what megatron-core 0.16's ``GPTModel.sharded_state_dict()`` produces: layers are stacked
along a leading axis of size num_layers under one key per parameter, in the Transformer Engine
spelling even for the local spec (``decoder.layers.self_attention.linear_qkv.weight`` is
[L, qkv rows, hidden]; layer N is the chunk at offset N); model-level keys are
``embedding.word_embeddings.weight``, ``decoder.final_layernorm.weight`` and, untied only,
``output_layer.weight``; each linear layer has an ``_extra_state`` object per layer. Nothing in it
depends on TP/PP: dist_checkpointing reshards at load, so one checkpoint loads at any layout.

``save_streaming`` writes this format with torch.distributed.checkpoint directly (megatron-core's
writer first materializes every tensor), one chunk per layer; ``read_entries`` reads chunks back
whatever chunking the writer used (megatron-core's own saves split fc1 into gate/up per TP rank).
Tests check both against megatron-core: same keys/shapes/dtypes as its save, and
``dist_checkpointing.load`` of ``model.sharded_state_dict()`` at TP1/TP2 x PP1/PP2.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list
from torch.distributed.checkpoint.planner import LoadPlan, SavePlan, TensorWriteData, WriteItem, WriteItemType

from megatron_hpt.conversion.mapping import ArchMapping, Mapping, layer_param_name
from megatron_hpt.models.checkpoint_dir import (  # noqa: F401 (re-exports)
    TRACKER, resolve_checkpoint_dir)
from megatron_hpt.models.shape import ModelShape
from megatron_hpt.models.unwrap import unwrap_model
#: linear modules of a layer whose ``_extra_state`` megatron-core saves (None for the local spec)
EXTRA_STATE_MODULES = ("self_attention.linear_proj", "self_attention.linear_qkv",
                       "mlp.linear_fc1", "mlp.linear_fc2")


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint key: model-level (``layer`` None) or one layer's chunk of a stacked key."""
    key: str
    layer: Optional[int]
    mapping: Mapping
    shape: Tuple[int, ...]
    """Shape of the full (TP-merged) megatron tensor of this layer (without the layer axis)."""


def checkpoint_entries(arch: ArchMapping, shape: ModelShape) -> List[CheckpointEntry]:
    """Every tensor the checkpoint of ``shape`` holds, in write order (embedding, layers, head)."""
    model = arch.model_entries(shape)
    first = [k for k in model if k.startswith("embedding.")]
    last = [k for k in model if not k.startswith("embedding.")]
    out = [CheckpointEntry(k, None, model[k], model[k].megatron_shape(shape)) for k in first]
    for layer in range(shape.num_layers):
        for name, m in arch.layer.items():
            out.append(CheckpointEntry("decoder.layers." + layer_param_name(name, "te"), layer, m,
                                       m.megatron_shape(shape)))
    out += [CheckpointEntry(k, None, model[k], model[k].megatron_shape(shape)) for k in last]
    return out


def expected_keys(arch: ArchMapping, shape: ModelShape) -> Dict[str, Tuple[int, ...]]:
    """Checkpoint tensor key -> global shape (stacked keys have the layer axis first)."""
    out = {}
    for e in checkpoint_entries(arch, shape):
        out[e.key] = e.shape if e.layer is None else (shape.num_layers,) + e.shape
    return out


def extra_state_keys(num_layers: int) -> List[str]:
    """DCP keys of the per-layer ``_extra_state`` objects (megatron's ShardedObject unique keys)."""
    return [f"decoder.layers.{m}._extra_state/shard_{layer}_{num_layers}"
            for layer in range(num_layers) for m in EXTRA_STATE_MODULES]


def _raise_original(e: "CheckpointException"):
    for failure in getattr(e, "failures", {}).values():
        exc = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(exc, BaseException):
            raise exc from e
    raise e


class _StreamingPlanner(DefaultSavePlanner):
    """A DCP save planner whose tensors are made on demand, one write item at a time.

    ``produce(entry)`` is called when the writer reaches the entry's item, and its result is
    dropped after it is written, so memory holds one tensor (plus the mapped inputs it reads).
    """

    def __init__(self, entries: List[CheckpointEntry], num_layers: int, dtype_of: Callable,
                 produce: Callable[[CheckpointEntry], torch.Tensor]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.entries, self.num_layers, self.produce = entries, num_layers, produce
        self.dtype_of = dtype_of
        self._by_index: Dict[Tuple[str, Tuple[int, ...]], CheckpointEntry] = {}

    def create_local_plan(self) -> SavePlan:
        items = []
        for key in extra_state_keys(self.num_layers):
            items.append(WriteItem(index=MetadataIndex(key), type=WriteItemType.BYTE_IO))
        for e in self.entries:
            stacked = e.layer is not None
            offsets = ((e.layer,) if stacked else ()) + (0,) * len(e.shape)
            sizes = ((1,) if stacked else ()) + e.shape
            size = ((self.num_layers,) if stacked else ()) + e.shape
            self._by_index[(e.key, offsets)] = e
            props = TensorProperties(dtype=self.dtype_of(e))
            items.append(WriteItem(
                index=MetadataIndex(e.key, torch.Size(offsets)), type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(chunk=ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes)),
                                            properties=props, size=torch.Size(size))))
        self.plan = SavePlan(items)
        return self.plan

    def resolve_data(self, write_item: WriteItem):
        if write_item.type == WriteItemType.BYTE_IO:
            buf = io.BytesIO()
            torch.save([None], buf)  # as megatron-core stores a ShardedObject: [data]; data is None
            buf.seek(0)
            return buf
        e = self._by_index[(write_item.index.fqn, tuple(write_item.index.offset))]
        t = self.produce(e)
        return t.unsqueeze(0) if e.layer is not None else t


def save_streaming(ckpt_dir: str, entries: List[CheckpointEntry], num_layers: int,
                   dtype_of: Callable[[CheckpointEntry], torch.dtype],
                   produce: Callable[[CheckpointEntry], torch.Tensor]) -> None:
    """Write a torch_dist checkpoint of ``entries`` in this process, one tensor in memory at a time.

    Nothing is sharded or moved between processes (``no_dist``): one file ``__0_0.distcp`` holds
    every tensor, as megatron-core would write it from a single rank; ``metadata.json`` and
    ``common.pt`` are the files megatron-core adds around torch.distributed.checkpoint's.
    """
    from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config

    os.makedirs(ckpt_dir, exist_ok=True)
    planner = _StreamingPlanner(entries, num_layers, dtype_of, produce)
    writer = dcp.FileSystemWriter(ckpt_dir, thread_count=1, single_file_per_rank=True)
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        try:
            dcp.save({}, storage_writer=writer, planner=planner, no_dist=True)
        except CheckpointException as e:  # DCP wraps errors: re-raise the original (bad file, ...)
            _raise_original(e)
    save_config(CheckpointingConfig("torch_dist", 1, "torch", 1), ckpt_dir)
    torch.save({}, os.path.join(ckpt_dir, "common.pt"))


#: first components of the keys of a GPTModel's sharded state dict; a training checkpoint also
#: holds ``optimizer.*`` tensors (Adam moments, fp32 main params) and non-tensor state
MODEL_KEY_PREFIXES = ("embedding.", "decoder.", "output_layer.")


def is_model_key(key: str) -> bool:
    """True for a checkpoint key of the model's weights (not optimizer or other training state)."""
    return key.startswith(MODEL_KEY_PREFIXES)


def read_model_tensor_metadata(ckpt_dir: str) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    """``read_tensor_metadata`` of the model's weights only (optimizer state and the rest left out)."""
    return {k: v for k, v in read_tensor_metadata(ckpt_dir).items() if is_model_key(k)}


def read_tensor_metadata(ckpt_dir: str) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    """Checkpoint key -> (global shape, dtype) of every tensor (objects left out)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    md = dcp.FileSystemReader(ckpt_dir).read_metadata()
    return {k: (tuple(v.size), v.properties.dtype) for k, v in md.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}


class _SliceLoadPlanner(DefaultLoadPlanner):
    """A DCP load planner that reads chunks (e.g. one layer of a stacked key) into given buffers."""

    def __init__(self, requests: Dict[Tuple[str, Tuple[int, ...]], torch.Tensor]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.requests = requests  # (key, chunk offsets) -> buffer of the chunk's shape

    def create_local_plan(self) -> LoadPlan:
        items = []
        for (key, offsets), buf in self.requests.items():
            chunk = ChunkStorageMetadata(torch.Size(offsets), buf.shape)
            items += create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [chunk])
        return LoadPlan(items)

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        return self.requests[(index.fqn, tuple(index.offset))]


def read_entries(ckpt_dir: str, entries: List[CheckpointEntry],
                 meta: Dict[str, Tuple[Tuple[int, ...], torch.dtype]]) -> List[torch.Tensor]:
    """Read the full tensors of ``entries`` (e.g. one layer's chunks of the stacked keys) and
    nothing else of the checkpoint. One process (``no_dist``); nothing is sharded or moved."""
    requests, out = {}, []
    for e in entries:
        stacked = e.layer is not None
        buf = torch.empty(((1,) if stacked else ()) + e.shape, dtype=meta[e.key][1])
        requests[(e.key, ((e.layer,) if stacked else ()) + (0,) * len(e.shape))] = buf
        out.append(buf[0] if stacked else buf)
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        try:
            dcp.load({}, storage_reader=dcp.FileSystemReader(ckpt_dir), planner=_SliceLoadPlanner(requests),
                     no_dist=True)
        except CheckpointException as e:
            _raise_original(e)
    return out


def load_megatron_weights(load_dir: str, model) -> str:
    """Load the weights of ``load_dir`` (tracker + ``release``/``iter_*``) into one model chunk.

    Collective over all ranks of the job (dist_checkpointing.load): every rank passes its own chunk
    (any TP/PP layout; each reads only its shards). Strict: raises ``RuntimeError`` naming the keys
    this rank's model needs that the checkpoint lacks, and the checkpoint keys no rank loaded; a
    shape mismatch raises megatron's ``CheckpointingException`` naming the key and both shapes.
    Returns the checkpoint directory that was read.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            raise ValueError(f"load_megatron_weights takes one model chunk, got {len(model)}")
        model = model[0]
    model = unwrap_model(model)  # megatron DDP / Float16Module wrappers share the parameters
    ckpt_dir = resolve_checkpoint_dir(load_dir)
    # megatron returns (state, "missing": in the checkpoint but loaded by no rank,
    #                   "unexpected": requested by this rank but absent from the checkpoint)
    state, not_loaded, not_in_ckpt = dist_checkpointing.load(
        {"model": model.sharded_state_dict()}, ckpt_dir, strict=StrictHandling.RETURN_ALL)
    # ``_extra_state`` (TE's FP8 metadata; empty for local layers) is state, not weights: a
    # checkpoint written for one layer spec loads into the other without it
    def weights(keys):
        return sorted(k for k in keys if "_extra_state" not in k)
    problems = []
    if weights(not_in_ckpt):
        problems.append(f"keys the model needs but {ckpt_dir} lacks: {weights(not_in_ckpt)}")
    if weights(not_loaded):
        problems.append(f"keys in {ckpt_dir} that no rank's model has: {weights(not_loaded)}")
    if problems:
        raise RuntimeError("checkpoint does not match the model: " + "; ".join(problems))
    load_model_state(model, state["model"], ckpt_dir)
    return ckpt_dir


def load_model_state(module, state: dict, source: str) -> None:
    """``module.load_state_dict(state)``, strict about weights, lenient about ``_extra_state``
    (Transformer Engine's FP8 metadata, absent from checkpoints written by the local spec or the
    converter, and the other way round)."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    unexpected = [k for k in unexpected if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise RuntimeError(f"{source}: loaded state does not match the model: missing {sorted(missing)}, "
                           f"unexpected {sorted(unexpected)}")
