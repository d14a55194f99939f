"""How one Hugging Face tensor (or a few) becomes one megatron-core parameter, and back.

A family's table (``llama.py``, ``qwen2.py``, ...) lists, per megatron-core parameter of the local
layer spec, one of three mappings; ``*`` in a Hugging Face name stands for the layer number:

- ``Direct(hf, dims, tp)``: the same tensor under another name.
- ``QKV(q, k, v)``: megatron's fused ``linear_qkv``. Its rows are grouped per query group g:
  ``[q rows of the heads of g (heads/groups*head_dim) ; k rows of g (head_dim) ; v rows of g]``,
  repeated for g = 0..groups-1. Hugging Face keeps q, k and v as three tensors.
- ``GatedMLP(gate, up)``: megatron's ``linear_fc1`` = ``[gate ; up]`` (SwiGLU).

Tensor parallelism (what each TP rank holds of the full tensor, ``tp`` attribute):

- ``None``: replicated (norms, q/k norms).
- ``column``: rows split in TP contiguous chunks. For QKV this is a split *by query group*
  because the fused rows are already grouped (rank r holds groups r*G/TP .. (r+1)*G/TP-1).
- ``gated``: column-parallel fc1, but gate and up are split separately and each rank holds
  ``[gate_r ; up_r]``.
- ``row``: columns split in TP chunks (``linear_proj``, ``linear_fc2``).
- ``vocab``: rows (vocabulary) split in TP chunks (embedding, output layer).

The same table drives HF -> Megatron, Megatron -> HF and the weight export to rollout engines.
Parameter names exist in two spellings: megatron-core's local spec (``input_layernorm.weight``,
``pre_mlp_layernorm.weight``) and its Transformer Engine spec, which fuses those norms into the
next linear layer (``self_attention.linear_qkv.layer_norm_weight``,
``mlp.linear_fc1.layer_norm_weight``). Checkpoint keys always use the TE spelling (the local spec
maps its names to them in ``sharded_state_dict``), with all layers stacked along a leading axis.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import torch

if TYPE_CHECKING:  # annotations only: the family tables import nothing above them
    from megatron_hpt.models.shape import ModelShape


def layer_param_name(name: str, spec: str = "local") -> str:
    """The name of a per-layer parameter in the ``spec`` spelling (``local``, or ``te`` /
    ``transformer_engine``); see ``names.py``, which derives the TE names from megatron-core."""
    from megatron_hpt.conversion.names import in_spec
    return in_spec(name, spec)


def dims(shape: ModelShape) -> Dict[str, int]:
    """Named sizes used in the tables' shape declarations."""
    return dict(hidden=shape.hidden_size, ffn=shape.ffn_hidden_size, vocab=shape.vocab_size,
                head_dim=shape.kv_channels, q_dim=shape.num_attention_heads * shape.kv_channels,
                kv_dim=shape.num_query_groups * shape.kv_channels)


def _layer(name: str, layer: Optional[int]) -> str:
    return name if layer is None else name.replace("*", str(layer))


@dataclass(frozen=True)
class Direct:
    """One HF tensor, unchanged. ``dims`` names its shape (keys of ``dims()``)."""
    hf: str
    dims: Tuple[str, ...]
    tp: Optional[str] = None

    def hf_names(self, layer: Optional[int] = None) -> List[str]:
        return [_layer(self.hf, layer)]

    def hf_shapes(self, shape: ModelShape) -> List[Tuple[int, ...]]:
        d = dims(shape)
        return [tuple(d[x] for x in self.dims)]

    def megatron_shape(self, shape: ModelShape) -> Tuple[int, ...]:
        return self.hf_shapes(shape)[0]

    def to_megatron(self, tensors: Sequence[torch.Tensor], shape: ModelShape) -> torch.Tensor:
        return tensors[0]

    def to_hf(self, tensor: torch.Tensor, shape: ModelShape) -> List[torch.Tensor]:
        return [tensor]


@dataclass(frozen=True)
class QKV:
    """Three HF projections (or their biases) fused into megatron's grouped ``linear_qkv``."""
    q: str
    k: str
    v: str
    bias: bool = False
    tp: str = field(default="column", init=False)

    def hf_names(self, layer: Optional[int] = None) -> List[str]:
        return [_layer(n, layer) for n in (self.q, self.k, self.v)]

    def hf_shapes(self, shape: ModelShape) -> List[Tuple[int, ...]]:
        d = dims(shape)
        tail = () if self.bias else (d["hidden"],)
        return [(d["q_dim"],) + tail, (d["kv_dim"],) + tail, (d["kv_dim"],) + tail]

    def megatron_shape(self, shape: ModelShape) -> Tuple[int, ...]:
        q, k, v = self.hf_shapes(shape)
        return (q[0] + k[0] + v[0],) + q[1:]

    @staticmethod
    def _split_sizes(shape: ModelShape) -> Tuple[int, int, int]:
        per_group = shape.num_attention_heads // shape.num_query_groups
        return per_group * shape.kv_channels, shape.kv_channels, shape.kv_channels

    def to_megatron(self, tensors: Sequence[torch.Tensor], shape: ModelShape) -> torch.Tensor:
        g = shape.num_query_groups
        q, k, v = (t.reshape(g, -1, *t.shape[1:]) for t in tensors)  # (g, rows of g, [hidden])
        return torch.cat([q, k, v], dim=1).reshape(-1, *tensors[0].shape[1:])

    def to_hf(self, tensor: torch.Tensor, shape: ModelShape) -> List[torch.Tensor]:
        g = shape.num_query_groups
        grouped = tensor.reshape(g, -1, *tensor.shape[1:])  # (g, (q_per_g+2)*head_dim, [hidden])
        parts = torch.split(grouped, self._split_sizes(shape), dim=1)
        return [p.reshape(-1, *tensor.shape[1:]).clone() for p in parts]  # own storage each


@dataclass(frozen=True)
class GatedMLP:
    """HF gate and up projections stacked into megatron's ``linear_fc1`` = [gate ; up]."""
    gate: str
    up: str
    tp: str = field(default="gated", init=False)

    def hf_names(self, layer: Optional[int] = None) -> List[str]:
        return [_layer(self.gate, layer), _layer(self.up, layer)]

    def hf_shapes(self, shape: ModelShape) -> List[Tuple[int, ...]]:
        return [(shape.ffn_hidden_size, shape.hidden_size)] * 2

    def megatron_shape(self, shape: ModelShape) -> Tuple[int, ...]:
        return (2 * shape.ffn_hidden_size, shape.hidden_size)

    def to_megatron(self, tensors: Sequence[torch.Tensor], shape: ModelShape) -> torch.Tensor:
        return torch.cat(list(tensors), dim=0)

    def to_hf(self, tensor: torch.Tensor, shape: ModelShape) -> List[torch.Tensor]:
        return [t.clone() for t in torch.chunk(tensor, 2, dim=0)]  # own storage each


Mapping = Direct | QKV | GatedMLP


def tp_shard(full: torch.Tensor, mapping: Mapping, tp_size: int, tp_rank: int) -> torch.Tensor:
    """The slice of the full megatron tensor that TP rank ``tp_rank`` holds (nothing moves)."""
    if mapping.tp is None or tp_size == 1:
        return full
    if mapping.tp == "gated":
        gate, up = torch.chunk(full, 2, dim=0)
        return torch.cat([torch.chunk(gate, tp_size)[tp_rank], torch.chunk(up, tp_size)[tp_rank]])
    dim = 1 if mapping.tp == "row" else 0
    return torch.chunk(full, tp_size, dim=dim)[tp_rank].contiguous()


def tp_merge(shards: Sequence[torch.Tensor], mapping: Mapping) -> torch.Tensor:
    """The full megatron tensor from the TP shards in rank order (inverse of ``tp_shard``)."""
    if mapping.tp is None or len(shards) == 1:
        return shards[0]
    if mapping.tp == "gated":
        halves = [torch.chunk(s, 2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(list(shards), dim=1 if mapping.tp == "row" else 0)


@dataclass(frozen=True)
class ArchMapping:
    """One family: its table (model-level and per-layer parameters, local-spec names) and the
    facts of its Hugging Face config (read by ``models/hf_config.py``)."""
    model_type: str
    """Hugging Face ``model_type``."""
    model: Dict[str, Mapping]
    """Full megatron names (``embedding.word_embeddings.weight``, ``decoder.final_layernorm.weight``,
    ``output_layer.weight``) -> mapping."""
    layer: Dict[str, Mapping]
    """Names inside ``decoder.layers.N.`` -> mapping (``*`` in HF names is N)."""
    architecture: str = ""
    """Hugging Face ``architectures[0]`` (``LlamaForCausalLM``)."""
    shape_fields: Dict[str, bool] = field(default_factory=dict)
    """The ``ModelShape`` fields the family fixes (``add_qkv_bias``, ``qk_layernorm``)."""

    def extend(self, model_type: str, layer: Dict[str, Mapping], architecture: str,
               **shape_fields: bool) -> "ArchMapping":
        """A family that adds per-layer parameters to this one (Qwen2 = Llama + QKV bias)."""
        return ArchMapping(model_type, dict(self.model), {**self.layer, **layer}, architecture,
                           {**self.shape_fields, **shape_fields})

    def model_entries(self, shape: ModelShape) -> Dict[str, Mapping]:
        """Model-level parameters this shape has (no ``output_layer.weight`` when tied)."""
        out = dict(self.model)
        if not shape.untie_embeddings_and_output_weights:
            out.pop("output_layer.weight", None)
        return out

    def hf_expected(self, shape: ModelShape) -> Dict[str, Tuple[int, ...]]:
        """Every HF tensor name a model of this shape has, with its shape."""
        out: Dict[str, Tuple[int, ...]] = {}
        for m in self.model_entries(shape).values():
            out.update(zip(m.hf_names(), m.hf_shapes(shape)))
        for layer in range(shape.num_layers):
            for m in self.layer.values():
                out.update(zip(m.hf_names(layer), m.hf_shapes(shape)))
        return out
