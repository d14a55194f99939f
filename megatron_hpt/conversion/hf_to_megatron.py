"""Hugging Face directory -> Megatron save dir (``release/`` torch_dist checkpoint + metadata files).

Streaming: the HF files are memory-mapped, and the checkpoint writer asks for one megatron tensor
at a time (``checkpoint.save_streaming``); each is built from mapped views of its HF tensors (a
fused QKV or fc1 allocates one layer tensor), written and dropped. Peak memory is about the largest
fused tensor plus what the writer serializes, independent of the model size.

The TP/PP sizes are only validated (heads, query groups, FFN width and vocabulary divisible by TP;
layers by PP) and recorded in ``conversion_args.json``: the checkpoint itself loads at any layout.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch
from tqdm import tqdm

from megatron_hpt.conversion.checkpoint import TRACKER, checkpoint_entries, save_streaming
from megatron_hpt.conversion.registry import mapping_for
from megatron_hpt.conversion.safetensors_io import HFSafetensors
from megatron_hpt.conversion.staging import copy_tokenizer_files, staged_output
from megatron_hpt.models.hf_config import load_hf_config, shape_from_hf_config
from megatron_hpt.models.shape import ModelShape

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def check_parallel_sizes(shape: ModelShape, tp: int, pp: int) -> None:
    """Raise naming every size that the layout does not divide."""
    if tp < 1 or pp < 1:
        raise ValueError(f"tensor/pipeline parallel sizes must be >= 1, got TP={tp} PP={pp}")
    problems = [f"{what} ({n}) is not divisible by {kind}={size}" for what, n, kind, size in (
        ("num_attention_heads", shape.num_attention_heads, "TP", tp),
        ("num_query_groups (num_key_value_heads)", shape.num_query_groups, "TP", tp),
        ("ffn_hidden_size (intermediate_size)", shape.ffn_hidden_size, "TP", tp),
        ("vocab_size", shape.vocab_size, "TP", tp),
        ("num_layers", shape.num_layers, "PP", pp)) if n % size]
    if problems:
        raise ValueError("invalid parallel layout: " + "; ".join(problems))


def convert_hf_to_megatron(hf_dir: str, save_dir: str, tensor_model_parallel_size: int = 1,
                           pipeline_model_parallel_size: int = 1, target_params_dtype: Optional[str] = None,
                           overwrite: bool = False, progress: bool = True) -> ModelShape:
    """Convert; everything is checked before anything is written, and ``save_dir`` appears only
    complete. ``target_params_dtype`` (bf16/fp16/fp32) casts; None keeps the source dtypes."""
    config_path = os.path.join(hf_dir, "config.json")
    hf_config = load_hf_config(hf_dir)
    shape = shape_from_hf_config(hf_config, source=config_path)
    arch = mapping_for(hf_config["model_type"], source=config_path)
    check_parallel_sizes(shape, tensor_model_parallel_size, pipeline_model_parallel_size)
    if target_params_dtype is not None and target_params_dtype not in DTYPES:
        raise ValueError(f"--target-params-dtype must be one of {sorted(DTYPES)}, got {target_params_dtype!r}")
    hf = HFSafetensors(hf_dir)
    hf.check(arch.hf_expected(shape))
    entries = checkpoint_entries(arch, shape)

    def dtype_of(e):
        return DTYPES[target_params_dtype] if target_params_dtype else hf.dtype_of[e.mapping.hf_names(e.layer)[0]]

    bar = tqdm(total=shape.num_layers + len(arch.model_entries(shape)), desc="hf->megatron", unit="layer", disable=not progress)
    seen = set()

    def produce(e):
        step = e.layer if e.layer is not None else e.key
        if step not in seen:  # one tick per layer (and for the embedding / output layer)
            seen.add(step)
            bar.update(1)
        t = e.mapping.to_megatron([hf.get(n) for n in e.mapping.hf_names(e.layer)], shape)
        if tuple(t.shape) != e.shape:
            raise ValueError(f"{e.key} (layer {e.layer}): built shape {tuple(t.shape)}, expected {e.shape}")
        return t.to(dtype_of(e))

    with staged_output(save_dir, overwrite) as tmp:
        save_streaming(os.path.join(tmp, "release"), entries, shape.num_layers, dtype_of, produce)
        bar.close()
        with open(os.path.join(tmp, TRACKER), "w") as f:
            f.write("release")
        with open(os.path.join(tmp, "model_shape.json"), "w") as f:
            f.write(shape.to_json())
        with open(os.path.join(tmp, "hf_config.json"), "w") as f:
            json.dump(hf_config, f, indent=2)
        copy_tokenizer_files(hf_dir, os.path.join(tmp, "tokenizer"))
        with open(os.path.join(tmp, "conversion_args.json"), "w") as f:
            json.dump(dict(hf_dir=os.path.abspath(hf_dir), model_type=hf_config["model_type"],
                           tensor_model_parallel_size=tensor_model_parallel_size,
                           pipeline_model_parallel_size=pipeline_model_parallel_size,
                           target_params_dtype=target_params_dtype,
                           note="validation only: the torch_dist checkpoint loads at any TP/PP"), f, indent=2)
    return shape
