"""Hugging Face safetensors in (lazy, memory-mapped) and out (sharded, with an index).

Reading never loads a file: ``get`` maps the file (``safe_open``) and returns a zero-copy view whose
pages are read on first touch; the mapping, and its pages in RSS, go away with the tensor (a
handle kept open for the whole run would keep every touched page of the model resident). Writing holds at most one output shard.
Only safetensors are read: pickled ``pytorch_model.bin`` files are refused (no code runs on load).
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Mapping, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

INDEX_NAME = "model.safetensors.index.json"
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class HFSafetensors:
    """All tensors of a Hugging Face model directory, by name, without reading their data."""

    def __init__(self, hf_dir: str):
        self.hf_dir = hf_dir
        files = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))
        if not files:
            bins = [f for f in os.listdir(hf_dir) if f.endswith((".bin", ".pt", ".pth"))]
            raise FileNotFoundError(
                f"{hf_dir}: no *.safetensors files" + (f" (found {bins}: pickle checkpoints are not "
                "loaded for safety; re-save the model with safe_serialization=True)" if bins else ""))
        self._files: List[str] = []
        self.file_of: Dict[str, str] = {}
        self.shape_of: Dict[str, Tuple[int, ...]] = {}
        self.dtype_of: Dict[str, torch.dtype] = {}
        index_path = os.path.join(hf_dir, INDEX_NAME)
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        for name in files:
            self._scan(name)
        if os.path.isfile(index_path):
            for tensor, fname in weight_map.items():
                if self.file_of.get(tensor) != fname:
                    raise ValueError(f"{index_path}: lists {tensor!r} in {fname}, which does not hold it")

    def _scan(self, fname: str) -> None:
        path = os.path.join(self.hf_dir, fname)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: listed in {INDEX_NAME} but missing")
        try:
            with safe_open(path, framework="pt") as handle:
                names = {n: handle.get_slice(n) for n in handle.keys()}
            for name, sl in names.items():
                self.shape_of[name] = tuple(sl.get_shape())
                self.dtype_of[name] = _DTYPES.get(sl.get_dtype(), sl.get_dtype())
                if name in self.file_of:
                    raise ValueError(f"{path}: tensor {name!r} also in {self.file_of[name]}")
                self.file_of[name] = fname
        except SafetensorError as e:
            raise ValueError(f"{path}: truncated or corrupt safetensors file ({e})") from e
        self._files.append(fname)

    def check(self, expected: Mapping[str, Tuple[int, ...]]) -> None:
        """Raise naming every missing tensor, unexpected tensor and shape mismatch at once."""
        problems: List[str] = []
        missing = sorted(set(expected) - set(self.shape_of))
        extra = sorted(set(self.shape_of) - set(expected))
        if missing:
            problems.append(f"missing tensors {missing}")
        if extra:
            problems.append(f"unexpected tensors {extra}")
        for name in sorted(set(expected) & set(self.shape_of)):
            if tuple(expected[name]) != self.shape_of[name]:
                problems.append(f"shape mismatch for {name}: expected {tuple(expected[name])}, "
                                f"got {self.shape_of[name]} (in {self.file_of[name]})")
        if problems:
            raise ValueError(f"{self.hf_dir}: checkpoint does not match config.json: " + "; ".join(problems))

    def get(self, name: str) -> torch.Tensor:
        """A memory-mapped view of one tensor (pages read when touched)."""
        path = os.path.join(self.hf_dir, self.file_of[name])
        try:  # a fresh mapping per tensor: its pages leave RSS when the tensor is dropped
            with safe_open(path, framework="pt") as handle:
                return handle.get_tensor(name)
        except SafetensorError as e:
            raise ValueError(f"{path}: cannot read {name!r} ({e})") from e

    def total_bytes(self) -> int:
        return sum(os.path.getsize(os.path.join(self.hf_dir, f)) for f in self._files)


def parse_size(text: str) -> int:
    """``5GB`` / ``500MB`` / ``2GiB`` / plain bytes -> bytes (decimal units like transformers)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse size {text!r} (examples: 5GB, 500MB, 1048576)")
    power = "KMGT".find(m.group(2).upper()) + 1 if m.group(2) else 0
    return int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power)


class ShardedSafetensorsWriter:
    """Writes ``model-0000i-of-0000N.safetensors`` shards of at most ``max_shard_bytes`` (a single
    larger tensor gets a shard of its own) and ``model.safetensors.index.json``."""

    def __init__(self, out_dir: str, max_shard_bytes: int):
        self.out_dir, self.max_shard_bytes = out_dir, max_shard_bytes
        self._pending: Dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: List[List[str]] = []
        self.total_size = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_size += size

    def _flush(self) -> None:
        path = os.path.join(self.out_dir, f"shard-{len(self._shards):05d}.tmp")
        save_file(self._pending, path, metadata={"format": "pt"})
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> List[str]:
        """Flush, give the shards their final names, write the index; returns the shard names."""
        if self._pending:
            self._flush()
        n = len(self._shards)
        weight_map, names = {}, []
        for i, tensors in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.rename(os.path.join(self.out_dir, f"shard-{i:05d}.tmp"), os.path.join(self.out_dir, final))
            weight_map.update({t: final for t in tensors})
            names.append(final)
        with open(os.path.join(self.out_dir, INDEX_NAME), "w") as f:
            json.dump({"metadata": {"total_size": self.total_size}, "weight_map": weight_map}, f, indent=2)
        return names
