"""Hugging Face <-> megatron-core weights: per-family tables, streaming converters, loading.

- ``mapping_for(model_type)``: the family's table (``llama``, ``qwen2``, ``qwen3``, ``mistral``).
- ``convert_hf_to_megatron`` / ``convert_megatron_to_hf``: the two directions (tools/ wrap them).
- ``load_megatron_weights(load_dir, model)``: load a converted (or trained) checkpoint into a live
  model chunk at any TP/PP layout.
"""
from megatron_hpt.conversion.checkpoint import load_megatron_weights, resolve_checkpoint_dir
from megatron_hpt.conversion.hf_to_megatron import check_parallel_sizes, convert_hf_to_megatron
from megatron_hpt.conversion.mapping import ArchMapping, Direct, GatedMLP, QKV, layer_param_name, tp_merge, tp_shard
from megatron_hpt.conversion.megatron_to_hf import convert_megatron_to_hf
from megatron_hpt.conversion.registry import MAPPINGS, mapping_for

__all__ = ["ArchMapping", "Direct", "GatedMLP", "MAPPINGS", "QKV", "check_parallel_sizes",
           "convert_hf_to_megatron", "convert_megatron_to_hf", "layer_param_name", "load_megatron_weights",
           "mapping_for", "resolve_checkpoint_dir", "tp_merge", "tp_shard"]
