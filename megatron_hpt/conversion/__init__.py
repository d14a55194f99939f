"""Hugging Face <-> megatron-core weights: per-family tables, streaming converters, loading.

- ``mapping_for(model_type)``: the family's table (``llama``, ``qwen2``, ``qwen3``, ``mistral``).
- ``convert_hf_to_megatron`` / ``convert_megatron_to_hf``: the two directions (tools/ wrap them).
- ``load_megatron_weights(load_dir, model)``: load a converted (or trained) checkpoint into a live
  model chunk at any TP/PP layout.

The names below are imported on first use, so that importing one module of the package (the
family registry, read by ``models/hf_config.py``) does not import the converters.
"""
import importlib

_EXPORTS = {
    "load_megatron_weights": "checkpoint", "resolve_checkpoint_dir": "checkpoint",
    "check_parallel_sizes": "hf_to_megatron", "convert_hf_to_megatron": "hf_to_megatron",
    "ArchMapping": "mapping", "Direct": "mapping", "GatedMLP": "mapping", "QKV": "mapping",
    "layer_param_name": "mapping", "tp_merge": "mapping", "tp_shard": "mapping",
    "convert_megatron_to_hf": "megatron_to_hf",
    "MAPPINGS": "registry", "mapping_for": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
