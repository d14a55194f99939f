"""Built-in model shapes for the planner (no downloads): the published ``config.json`` values.

Each entry is what ``shape_from_hf_config`` makes of the model's Hugging Face config; a path to a
directory (or a ``config.json``) is read the same way.
"""
from __future__ import annotations

import json
import os
from typing import Dict

from megatron_hpt.models.hf_config import load_hf_config, shape_from_hf_config
from megatron_hpt.models.shape import ModelShape

_LLAMA3 = dict(normalization="RMSNorm", norm_epsilon=1e-5, swiglu=True, rotary_base=500000.0,
               position_embedding_type="rope", untie_embeddings_and_output_weights=True,
               add_bias_linear=False, hf_model_type="llama")
_QWEN25 = dict(normalization="RMSNorm", norm_epsilon=1e-6, swiglu=True, rotary_base=1000000.0,
               position_embedding_type="rope", add_bias_linear=False, add_qkv_bias=True,
               hf_model_type="qwen2")

#: name -> ModelShape (Llama 3.1 = Llama 3 with 128k positions and RoPE scaling 8; same weights
#: shapes, so the same parameter counts)
NAMED_SHAPES: Dict[str, ModelShape] = {
    "llama3-8b": ModelShape(num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
                            num_attention_heads=32, num_query_groups=8, vocab_size=128256,
                            max_position_embeddings=8192, **_LLAMA3),
    "llama3.1-8b": ModelShape(num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
                              num_attention_heads=32, num_query_groups=8, vocab_size=128256,
                              max_position_embeddings=131072, rope_scaling_factor=8.0, **_LLAMA3),
    "llama3-70b": ModelShape(num_layers=80, hidden_size=8192, ffn_hidden_size=28672,
                             num_attention_heads=64, num_query_groups=8, vocab_size=128256,
                             max_position_embeddings=8192, **_LLAMA3),
    "llama3.1-70b": ModelShape(num_layers=80, hidden_size=8192, ffn_hidden_size=28672,
                               num_attention_heads=64, num_query_groups=8, vocab_size=128256,
                               max_position_embeddings=131072, rope_scaling_factor=8.0, **_LLAMA3),
    "qwen2.5-7b": ModelShape(num_layers=28, hidden_size=3584, ffn_hidden_size=18944,
                             num_attention_heads=28, num_query_groups=4, vocab_size=152064,
                             max_position_embeddings=32768, untie_embeddings_and_output_weights=True,
                             **_QWEN25),
    "qwen2.5-math-7b": ModelShape(num_layers=28, hidden_size=3584, ffn_hidden_size=18944,
                                  num_attention_heads=28, num_query_groups=4, vocab_size=152064,
                                  max_position_embeddings=4096,
                                  untie_embeddings_and_output_weights=True,
                                  **dict(_QWEN25, rotary_base=10000.0)),
    "qwen2.5-32b": ModelShape(num_layers=64, hidden_size=5120, ffn_hidden_size=27648,
                              num_attention_heads=40, num_query_groups=8, vocab_size=152064,
                              max_position_embeddings=32768, untie_embeddings_and_output_weights=True,
                              **_QWEN25),
}


def resolve_shape(model: str) -> ModelShape:
    """A named size (``NAMED_SHAPES``), a Hugging Face directory or a ``config.json`` path."""
    if model in NAMED_SHAPES:
        return NAMED_SHAPES[model]
    if os.path.isdir(model):
        return shape_from_hf_config(load_hf_config(model), source=f"{model}/config.json")
    if os.path.isfile(model):
        with open(model) as f:
            try:
                return shape_from_hf_config(json.load(f), source=model)
            except json.JSONDecodeError as e:
                raise ValueError(f"{model}: not valid JSON ({e})") from e
    raise ValueError(f"--model {model!r}: not a named size ({', '.join(sorted(NAMED_SHAPES))}) "
                     "nor a Hugging Face directory / config.json")
