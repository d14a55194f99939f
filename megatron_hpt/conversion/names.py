"""The two spellings of megatron-core 0.16's layer parameter names, and HF <-> megatron state
dicts in either spelling.

- Local spec (``get_gpt_layer_local_spec``): separate norm modules, ``input_layernorm.weight`` and
  ``pre_mlp_layernorm.weight`` (plus ``.bias`` for LayerNorm).
- Transformer Engine spec (``get_gpt_layer_with_transformer_engine_spec``): those norms are fused
  into the next linear layer (``TELayerNormColumnParallelLinear``):
  ``self_attention.linear_qkv.layer_norm_weight`` and ``mlp.linear_fc1.layer_norm_weight``
  (``layer_norm_bias``); the layer's ``input_layernorm`` / ``pre_mlp_layernorm`` are ``IdentityOp``.

Every other parameter (``linear_qkv.weight/bias``, ``linear_proj.weight``, ``linear_fc1/2.weight``,
``q_layernorm.weight``, ``k_layernorm.weight``, embedding, final norm, output layer) has the same
name in both. The renaming is megatron-core's own: the local spec declares it as its
``sharded_state_dict_keys_map`` (that is how local-spec checkpoints get the TE keys); it is read
from the spec here, not retyped.

TE modules also hold ``_extra_state`` entries (FP8 scaling metadata of ``linear_qkv``,
``linear_proj``, ``linear_fc1``, ``linear_fc2``, ``core_attention`` and, in some TE versions,
the TE norms); megatron-core's local linear layers hold an empty one. They are state, not weights:
every mapping here skips names ending in ``_extra_state``.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import torch

if TYPE_CHECKING:  # annotations only: mapping.layer_param_name imports this module
    from megatron_hpt.conversion.mapping import ArchMapping, Mapping
    from megatron_hpt.models.shape import ModelShape

#: the spellings: megatron-core's local spec and its Transformer Engine spec ("te" is the short name)
SPELLINGS = {"local": "local", "te": "te", "transformer_engine": "te"}
EXTRA_STATE = "_extra_state"


@functools.lru_cache(maxsize=1)
def te_prefix_map() -> Tuple[Tuple[str, str], ...]:
    """(local prefix, TE prefix) pairs inside a layer, from megatron-core's local layer spec."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    keys_map = get_gpt_layer_local_spec().submodules.sharded_state_dict_keys_map
    return tuple(sorted(keys_map.items()))


def _spelling(spec: str) -> str:
    if spec not in SPELLINGS:
        raise ValueError(f"spec must be one of {sorted(SPELLINGS)}, got {spec!r}")
    return SPELLINGS[spec]


def in_spec(name: str, spec: str) -> str:
    """A per-layer parameter name (either spelling in) in the ``spec`` spelling."""
    local = to_local(name)
    if _spelling(spec) == "local":
        return local
    for old, new in te_prefix_map():
        if local.startswith(old):
            return new + local[len(old):]
    return local


def to_local(name: str) -> str:
    """A per-layer parameter name (either spelling in) in the local-spec spelling."""
    for old, new in te_prefix_map():
        if name.startswith(new):
            return old + name[len(new):]
    return name


def layer_mappings(arch: ArchMapping, spec: Optional[str] = None) -> Dict[str, Mapping]:
    """Per-layer parameter name -> mapping, in the ``spec`` spelling, or in both when None."""
    spellings = ("local", "te") if spec is None else (_spelling(spec),)
    return {in_spec(n, s): m for s in spellings for n, m in arch.layer.items()}


def megatron_state_from_hf(arch: ArchMapping, shape: ModelShape, hf: Dict[str, torch.Tensor],
                           spec: str = "local") -> Dict[str, torch.Tensor]:
    """The full (TP1, PP1) megatron-core state dict of the HF tensors ``hf``, parameters named as
    the ``spec`` builds them (``decoder.layers.N.<name>``); no ``_extra_state`` entries."""
    def take(m: Mapping, layer: Optional[int]) -> torch.Tensor:
        names = m.hf_names(layer)
        missing = [n for n in names if n not in hf]
        if missing:
            raise KeyError(f"HF state lacks {missing}")
        return m.to_megatron([hf[n] for n in names], shape)

    out = {}
    model = arch.model_entries(shape)
    for key in [k for k in model if k.startswith("embedding.")]:
        out[key] = take(model[key], None)
    for layer in range(shape.num_layers):
        for name, m in arch.layer.items():
            out[f"decoder.layers.{layer}.{in_spec(name, spec)}"] = take(m, layer)
    for key in [k for k in model if not k.startswith("embedding.")]:
        out[key] = take(model[key], None)
    return out


def hf_state_from_megatron(arch: ArchMapping, shape: ModelShape,
                           state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """HF tensors from a full megatron-core state dict in either spelling (``_extra_state``
    entries skipped; a tied model's ``output_layer.weight`` dropped). Raises naming the keys that
    are not parameters of ``shape`` and the ones it lacks."""
    model, layer_map = arch.model_entries(shape), layer_mappings(arch)
    out, unknown = {}, []
    for key, tensor in state.items():
        if key.endswith(EXTRA_STATE):
            continue
        if key in model:
            m, layer = model[key], None
        elif key.startswith("decoder.layers.") and key.split(".", 3)[2].isdigit():
            _, _, idx, rest = key.split(".", 3)
            if rest not in layer_map or int(idx) >= shape.num_layers:
                unknown.append(key)
                continue
            m, layer = layer_map[rest], int(idx)
        elif key == "output_layer.weight" and not shape.untie_embeddings_and_output_weights:
            continue  # tied: the embedding is the output layer
        else:
            unknown.append(key)
            continue
        out.update(zip(m.hf_names(layer), m.to_hf(tensor, shape)))
    lacks = sorted(set(arch.hf_expected(shape)) - set(out))
    if unknown or lacks:
        raise KeyError(f"megatron state does not match the {arch.model_type} shape: "
                       f"unknown keys {sorted(unknown)}; lacks what makes HF {lacks}")
    return out


def te_spec_parameter_names(arch: ArchMapping, shape: ModelShape) -> List[str]:
    """The parameter names of a Transformer Engine spec GPTModel of ``shape`` (TP1, PP1): what
    ``model.named_parameters()`` yields with megatron-core 0.16's TE spec (``_extra_state``
    entries of ``state_dict()`` aside)."""
    out = list(arch.model_entries(shape))
    layer = [in_spec(n, "te") for n in arch.layer]
    return out[:1] + [f"decoder.layers.{i}.{n}" for i in range(shape.num_layers) for n in layer] + out[1:]
