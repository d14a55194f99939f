"""Distributed checkpoints with megatron-core ``dist_checkpointing`` (torch_dist backend).

Layout (Megatron-LM's): ``SAVE/latest_checkpointed_iteration.txt`` holds an iteration number (or
``release`` for converted weights), and ``SAVE/iter_0000010/`` is a dist checkpoint of
``{"model": ..., "optimizer": ..., "scheduler": ..., "iteration": ...}``. Because torch_dist stores
global tensors with their shard offsets, a checkpoint saved at one TP/PP layout loads at any
other. Saves are atomic: everything is written to ``iter_XXXXXXX.tmp`` and renamed once every rank
has finished; the tracker file is replaced last, so a crash leaves the previous checkpoint usable.
``model_shape.json`` beside it records the model shape.
"""
from __future__ import annotations

import os
import shutil
from typing import List, Optional

import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.serialization import StrictHandling

from megatron_hpt.conversion.checkpoint import load_model_state

TRACKER = "latest_checkpointed_iteration.txt"


def iteration_dir(root: str, iteration) -> str:
    name = "release" if iteration == "release" else f"iter_{int(iteration):07d}"
    return os.path.join(root, name)


def read_tracker(root: str) -> Optional[str]:
    """The tracker's content (``"release"`` or an iteration number as text), None if absent."""
    path = os.path.join(root, TRACKER)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    if text != "release" and not text.isdigit():
        raise ValueError(f"{path}: expected an iteration number or 'release', got {text!r}")
    return text


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def unwrap(chunk):
    """The GPTModel inside a DDP (or other) wrapper: checkpoints hold unwrapped names."""
    return getattr(chunk, "module", chunk)


def _model_state(model: List) -> dict:
    return {"model": unwrap(model[0]).sharded_state_dict()} if len(model) == 1 else {
        f"model{i}": unwrap(chunk).sharded_state_dict() for i, chunk in enumerate(model)}


def rotate_checkpoints(root: str, keep_last: int) -> List[str]:
    """Delete all but the newest ``keep_last`` ``iter_*`` directories of ``root`` (never
    ``release``, never the tracker's iteration, never ``*.tmp``). Returns the deleted paths."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    current = read_tracker(root)
    iters = sorted(int(name[5:]) for name in os.listdir(root)
                   if name.startswith("iter_") and name[5:].isdigit()
                   and os.path.isdir(os.path.join(root, name)))
    doomed = [i for i in iters[:-keep_last] if str(i) != current]
    paths = [iteration_dir(root, i) for i in doomed]
    for path in paths:
        shutil.rmtree(path)
    return paths


def save_checkpoint(root: str, iteration: int, model: List, optimizer=None, scheduler=None,
                    shape=None, keep_last: Optional[int] = None) -> str:
    """Collective: every rank calls it. Returns the final directory. With ``keep_last``, older
    ``iter_*`` directories are deleted once this one is complete and named by the tracker."""
    final = iteration_dir(root, iteration)
    tmp = final + ".tmp"
    rank = dist.get_rank()
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        if shape is not None:
            _write_atomic(os.path.join(root, "model_shape.json"), shape.to_json())
    dist.barrier()
    state = _model_state(model)
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state["model"] if len(model) == 1 else state)
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    state["iteration"] = iteration
    dist_checkpointing.save(state, tmp)
    dist.barrier()
    if rank == 0:
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(os.path.join(root, TRACKER), str(iteration))
        if keep_last is not None:
            rotate_checkpoints(root, keep_last)
    dist.barrier()
    return final


def load_checkpoint(root: str, model: List, optimizer=None, scheduler=None,
                    finetune: bool = False) -> int:
    """Load the tracker's checkpoint into ``model`` (and optimizer/scheduler when given and present).
    Returns the iteration to resume from (0 for ``release`` checkpoints or ``finetune``)."""
    tag = read_tracker(root)
    if tag is None:
        raise FileNotFoundError(f"{root}: no {TRACKER}; not a megatron-hpt/Megatron-LM checkpoint dir")
    ckpt = iteration_dir(root, tag)
    if not os.path.isdir(ckpt):
        raise FileNotFoundError(f"{ckpt}: named by {TRACKER} but missing")
    release = tag == "release"
    state = _model_state(model)
    if optimizer is not None and not release and not finetune:
        state["optimizer"] = optimizer.sharded_state_dict(
            state["model"] if len(model) == 1 else state, is_loading=True)
    loaded, missing, unexpected = dist_checkpointing.load(
        state, ckpt, strict=StrictHandling.RETURN_ALL)
    missing = {k for k in missing if k.startswith("model")}
    if missing:
        raise RuntimeError(f"{ckpt}: checkpoint lacks model tensors {sorted(missing)[:10]}"
                           f"{' ...' if len(missing) > 10 else ''}")
    for i, chunk in enumerate(model):
        load_model_state(unwrap(chunk), loaded["model" if len(model) == 1 else f"model{i}"], ckpt)
    if "optimizer" in state:
        optimizer.load_state_dict(loaded["optimizer"])
    if release or finetune:
        return 0
    if scheduler is not None and "scheduler" in loaded:
        scheduler.load_state_dict(loaded["scheduler"])
    return int(loaded.get("iteration", tag))
