"""Megatron save dir (written by ``hf_to_megatron`` or by training) -> Hugging Face directory.

Any checkpoint the trainer writes converts: only the model's tensors are read (a training
checkpoint also holds optimizer state, which is ignored), at whatever TP/PP it was saved (the
torch_dist format stores global tensors). The family comes from ``model_shape.json``
(``hf_model_type``, set when the model was built from a Hugging Face config) or, for a model built
from Megatron flags, from ``model_type=`` (the tool's ``--model-type``); either way the shape must
be one that family can express.

Streaming: the checkpoint is read one tensor of one layer at a time (torch.distributed.checkpoint
reads only that chunk), turned into HF tensors by the family's table and handed to a shard writer
that holds at most one output shard. The result loads with
``transformers.AutoModelForCausalLM.from_pretrained``.
"""
from __future__ import annotations

import json
import os

from tqdm import tqdm

import dataclasses
from typing import Optional

from megatron_hpt.conversion.checkpoint import (checkpoint_entries, expected_keys, read_entries,
                                                read_model_tensor_metadata, resolve_checkpoint_dir)
from megatron_hpt.conversion.registry import MAPPINGS, mapping_for
from megatron_hpt.conversion.safetensors_io import ShardedSafetensorsWriter, parse_size
from megatron_hpt.conversion.staging import copy_tokenizer_files, staged_output
from megatron_hpt.models.hf_config import family_mismatches, hf_config_from_shape
from megatron_hpt.models.shape import ModelShape

_DTYPE_NAMES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


def read_shape_and_config(load_dir: str):
    """``model_shape.json`` and ``hf_config.json`` written next to the checkpoint at conversion."""
    path = os.path.join(load_dir, "model_shape.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (written by convert_hf_to_megatron / training)")
    with open(path) as f:
        shape = ModelShape.from_json(f.read(), source=path)
    base = {}
    cfg_path = os.path.join(load_dir, "hf_config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            base = json.load(f)
    return shape, base


def resolve_family(shape: ModelShape, base: dict, model_type: Optional[str], source: str) -> ModelShape:
    """``shape`` with ``hf_model_type`` set to the family it is exported as; raises naming the
    flag to pass (no family recorded) or the fields that do not fit (shape vs family)."""
    recorded = shape.hf_model_type or base.get("model_type")
    if model_type is not None and recorded is not None and model_type != recorded:
        raise ValueError(f"{source}: the model is a {recorded!r} model; --model-type {model_type} "
                         "contradicts it (drop the flag)")
    chosen = model_type or recorded
    if chosen is None:
        fits = [t for t in sorted(MAPPINGS) if not family_mismatches(shape, t)]
        raise ValueError(f"{source}: no model_type (the model was built from Megatron flags): pass "
                         f"--model-type, one of {sorted(MAPPINGS)}"
                         + (f" (this shape fits {fits})" if fits else " (this shape fits none of them)"))
    mapping_for(chosen, source=source if model_type is None else "--model-type")
    problems = family_mismatches(shape, chosen)
    if problems:
        raise ValueError(f"{source}: this model is not a {chosen} model: " + "; ".join(problems))
    return dataclasses.replace(shape, hf_model_type=chosen)


def check_checkpoint(ckpt_dir: str, expected, meta) -> None:
    """Raise naming missing keys, unexpected keys and shape mismatches all at once."""
    problems = []
    missing = sorted(set(expected) - set(meta))
    extra = sorted(set(meta) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing}")
    if extra:
        problems.append(f"unexpected tensors {extra}")
    for k in sorted(set(expected) & set(meta)):
        if tuple(expected[k]) != meta[k][0]:
            problems.append(f"shape mismatch for {k}: expected {tuple(expected[k])}, got {meta[k][0]}")
    if problems:
        raise ValueError(f"{ckpt_dir}: checkpoint does not match model_shape.json: " + "; ".join(problems))


def _special_token_ids(tok_dir: str) -> dict:
    """bos/eos/pad ids of the tokenizer saved beside a checkpoint (generation stops at eos)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    return {f"{k}_token_id": getattr(tok, f"{k}_token_id") for k in ("bos", "eos", "pad")
            if getattr(tok, f"{k}_token_id", None) is not None}


def convert_megatron_to_hf(load_dir: str, save_dir: str, overwrite: bool = False,
                           max_shard_size: str = "5GB", progress: bool = True,
                           model_type: Optional[str] = None) -> dict:
    """Convert; returns the written ``config.json`` dict. ``save_dir`` appears only complete.
    ``model_type``: the family of a model built from Megatron flags (llama, qwen2, qwen3, mistral)."""
    shape, base = read_shape_and_config(load_dir)
    shape = resolve_family(shape, base, model_type, os.path.join(load_dir, "model_shape.json"))
    arch = mapping_for(shape.hf_model_type)
    ckpt_dir = resolve_checkpoint_dir(load_dir)
    meta = read_model_tensor_metadata(ckpt_dir)
    check_checkpoint(ckpt_dir, expected_keys(arch, shape), meta)
    entries = checkpoint_entries(arch, shape)
    groups = [[e for e in entries if e.layer is None and e.key.startswith("embedding.")]]
    groups += [[e for e in entries if e.layer == layer] for layer in range(shape.num_layers)]
    groups += [[e for e in entries if e.layer is None and not e.key.startswith("embedding.")]]
    with staged_output(save_dir, overwrite) as tmp:
        writer = ShardedSafetensorsWriter(tmp, parse_size(max_shard_size))
        for group in tqdm(groups, desc="megatron->hf", unit="layer", disable=not progress):
            for e in group:  # one tensor at a time: read, convert, hand to the writer, drop
                hf_tensors = e.mapping.to_hf(read_entries(ckpt_dir, [e], meta)[0], shape)
                for name, hf_t in zip(e.mapping.hf_names(e.layer), hf_tensors):
                    writer.add(name, hf_t)
                del hf_tensors
        writer.close()
        config = hf_config_from_shape(shape, base=base)
        tok_dir = os.path.join(load_dir, "tokenizer")
        if not base and os.path.isdir(tok_dir):  # a model built from flags: token ids from its tokenizer
            config.update(_special_token_ids(tok_dir))
        dtype = _DTYPE_NAMES.get(str(meta["embedding.word_embeddings.weight"][1]))
        for field in ("torch_dtype", "dtype"):
            if field in config and dtype and config[field] != dtype:
                config[field] = dtype
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        if os.path.isdir(tok_dir):
            copy_tokenizer_files(tok_dir, tmp)
        if not os.path.isfile(os.path.join(tmp, "generation_config.json")):
            gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
            with open(os.path.join(tmp, "generation_config.json"), "w") as f:
                json.dump(dict(gen, _from_model_config=True), f, indent=2)
    return config
