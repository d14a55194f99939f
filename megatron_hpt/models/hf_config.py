"""Hugging Face ``config.json`` <-> ``ModelShape`` for the supported families.

One table per direction, checked field by field, reporting every problem at once.
Supported ``model_type``: llama (Llama 3.x), qwen2 (Qwen2/2.5), qwen3, mistral.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from megatron_hpt.conversion.registry import MAPPINGS
from megatron_hpt.models.shape import ModelShape

#: model_type -> (architecture class name, per-family fixed ModelShape fields), from the family
#: registry (conversion/registry.py: one module per family feeds this and the conversion table)
_FAMILY = {m.model_type: (m.architecture, dict(m.shape_fields)) for m in MAPPINGS.values()}
SUPPORTED_MODEL_TYPES = tuple(_FAMILY)


def load_hf_config(hf_dir: str) -> Dict[str, Any]:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no config.json in the Hugging Face directory {hf_dir!r}")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e


def shape_from_hf_config(cfg: Dict[str, Any], source: str = "config.json") -> ModelShape:
    """Map a Hugging Face config dict to a ModelShape; raises with every unsupported field named."""
    model_type = cfg.get("model_type")
    if model_type not in _FAMILY:
        raise ValueError(f"{source}: unsupported model_type {model_type!r}; "
                         f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    missing = [k for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                           "num_attention_heads", "vocab_size")
               if not isinstance(cfg.get(k), int) or isinstance(cfg.get(k), bool) or cfg[k] < 1]
    if missing:
        raise ValueError(f"{source}: field(s) {', '.join(missing)} missing or not a positive "
                         f"integer; a {model_type} config.json has them (copy it from the model's "
                         "original repository)")
    problems = []
    if cfg.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={cfg.get('hidden_act')!r} (only silu is supported)")
    if cfg.get("attention_bias", False) and model_type != "qwen2":
        problems.append("attention_bias=true (only Qwen2 has a QKV bias)")
    if cfg.get("mlp_bias", False):
        problems.append("mlp_bias=true is not supported")
    if model_type == "mistral" and cfg.get("sliding_window") not in (None, 0):
        if cfg.get("sliding_window") < cfg.get("max_position_embeddings", 0):
            problems.append(f"sliding_window={cfg['sliding_window']} (sliding-window attention "
                            "is not supported; set it to null for full attention)")
    rope_factor = None
    # transformers < 5 writes rope_theta + rope_scaling; >= 5 writes rope_parameters (theta inside)
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or None
    rope_theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    if rope is not None and rope.get("rope_type", rope.get("type", "default")) != "default":
        kind = rope.get("rope_type", rope.get("type"))
        expected = dict(low_freq_factor=1.0, high_freq_factor=4.0,
                        original_max_position_embeddings=8192)
        if kind != "llama3":
            problems.append(f"rope_scaling type {kind!r} (only llama3 is supported)")
        else:
            for k, v in expected.items():
                if float(rope.get(k, v)) != v:
                    problems.append(f"rope_scaling.{k}={rope.get(k)} (megatron-core uses {v})")
            rope_factor = float(rope.get("factor", 8.0))
    if problems:
        raise ValueError(f"{source}: cannot map to megatron-core: " + "; ".join(problems))
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return ModelShape(
        num_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"],
        ffn_hidden_size=cfg["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=cfg.get("num_key_value_heads") or heads,
        kv_channels=head_dim,
        vocab_size=cfg["vocab_size"],
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        position_embedding_type="rope",
        rotary_base=float(rope_theta),
        rope_scaling_factor=rope_factor,
        normalization="RMSNorm",
        norm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
        swiglu=True,
        untie_embeddings_and_output_weights=not cfg.get("tie_word_embeddings", False),
        add_bias_linear=False,
        hf_model_type=model_type,
        **_FAMILY[model_type][1],
    )


def family_mismatches(shape: ModelShape, model_type: str) -> List[str]:
    """What keeps ``shape`` from being a model of the Hugging Face family ``model_type`` (empty
    when it is one): the fields a family fixes, each as ``field=value (family needs X)``."""
    if model_type not in _FAMILY:
        return [f"model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"]
    need = dict(position_embedding_type="rope", normalization="RMSNorm", swiglu=True,
                add_bias_linear=False, **_FAMILY[model_type][1])
    return [f"{k}={getattr(shape, k)!r} ({model_type} needs {v!r})"
            for k, v in need.items() if getattr(shape, k) != v]


def hf_config_from_shape(shape: ModelShape, base: Dict[str, Any] | None = None) -> Dict[str, Any]:
    """The Hugging Face config dict of a shape; ``base`` (the source config) keeps the fields
    megatron does not model (token ids, torch_dtype, ...) so a round trip is lossless."""
    model_type = shape.hf_model_type or "llama"
    if model_type not in _FAMILY:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {SUPPORTED_MODEL_TYPES}")
    cfg = dict(base or {})
    cfg.update(
        model_type=model_type,
        architectures=[_FAMILY[model_type][0]],
        num_hidden_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.ffn_hidden_size,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_query_groups,
        head_dim=shape.kv_channels,
        vocab_size=shape.vocab_size,
        max_position_embeddings=shape.max_position_embeddings,
        rms_norm_eps=shape.norm_epsilon,
        hidden_act="silu",
        tie_word_embeddings=not shape.untie_embeddings_and_output_weights,
    )
    if isinstance(cfg.get("rope_parameters"), dict):
        cfg["rope_parameters"] = dict(cfg["rope_parameters"], rope_theta=shape.rotary_base)
    elif "rope_theta" in cfg or not base:
        cfg["rope_theta"] = shape.rotary_base
    if shape.rope_scaling_factor is not None and not (cfg.get("rope_scaling") or base):
        cfg["rope_parameters"] = dict(rope_type="llama3", rope_theta=shape.rotary_base,
                                      factor=shape.rope_scaling_factor, low_freq_factor=1.0,
                                      high_freq_factor=4.0, original_max_position_embeddings=8192)
    return cfg
