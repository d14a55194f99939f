"""Distributed checkpoints with megatron-core ``dist_checkpointing`` (torch_dist backend).

Layout (Megatron-LM's): ``SAVE/latest_checkpointed_iteration.txt`` holds an iteration number (or
``release`` for converted weights), and ``SAVE/iter_0000010/`` is a dist checkpoint of
``{"model": ..., "optimizer": ..., "scheduler": ..., "iteration": ...}``. Because torch_dist stores
global tensors with their shard offsets, a checkpoint saved at one TP/PP layout loads at any
other. Saves are atomic: everything is written to ``iter_XXXXXXX.tmp`` and renamed once every rank
has finished; the tracker file is replaced last, so a crash (SIGKILL included) at any point leaves
the previous checkpoint usable and nothing that ``--load`` could pick (it reads only the tracker's
directory; unfinished ``*.tmp`` directories are removed by the next save). A failed save (disk
full, ...) removes its staging directory and raises ``CheckpointSaveError`` on every rank.

Inside each checkpoint directory: ``model_shape.json`` (the model shape; copied to ``SAVE/`` after
the tracker for the converters) and ``rank_state/rank_NNNNN.pt``, each rank's resume state (RNG
streams, the task's pending rollouts: ``training/resume.py``), plain tensors read with
``weights_only=True``.
"""
from __future__ import annotations

import os
import shutil
from typing import List, Optional

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.serialization import StrictHandling

from megatron_hpt.conversion.checkpoint import load_model_state
from megatron_hpt.models.checkpoint_dir import (  # noqa: F401 (read_tracker: re-export)
    TRACKER, iteration_dir, read_tracker, resolve_checkpoint_dir)
from megatron_hpt.models.unwrap import unwrap_model as unwrap

RANK_STATE_DIR = "rank_state"


class CheckpointSaveError(RuntimeError):
    """A save that did not complete; the previous checkpoint is untouched."""


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _model_state(model: List) -> dict:
    return {"model": unwrap(model[0]).sharded_state_dict()} if len(model) == 1 else {
        f"model{i}": unwrap(chunk).sharded_state_dict() for i, chunk in enumerate(model)}


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rank_state_path(ckpt_dir: str, rank: int) -> str:
    return os.path.join(ckpt_dir, RANK_STATE_DIR, f"rank_{rank:05d}.pt")


def _remove_unfinished(root: str) -> None:
    """Staging directories of saves that never completed (a killed run)."""
    named = read_tracker(root)
    keep = iteration_dir(root, named) + ".old" if named is not None else None
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.startswith("iter_") and name.endswith((".tmp", ".old")):
            if path == keep and not os.path.isdir(path[:-4]):
                continue  # the tracker's checkpoint, caught between two renames: keep it
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(root: str, iteration: int, model: List, optimizer=None, scheduler=None,
                    shape=None, extra: Optional[dict] = None, reference: Optional[List] = None
                    ) -> str:
    """Collective: every rank calls it. ``extra``: this rank's resume state (tensors, numbers,
    lists, dicts), written to ``rank_state/`` inside the checkpoint; ``reference``: the frozen
    KL reference model, saved under ``reference.*`` keys. Returns the final directory; raises
    ``CheckpointSaveError`` (every rank) when the save cannot complete."""
    final = iteration_dir(root, iteration)
    tmp = final + ".tmp"
    rank = dist.get_rank()
    error = None
    try:  # every rank takes part in both all-reduces below, whatever fails where
        if rank == 0:
            os.makedirs(root, exist_ok=True)
            _remove_unfinished(root)
            os.makedirs(tmp)
    except Exception as e:  # noqa: BLE001 - every failure: clean up, say so on every rank
        error = e
    if _all_ok(error is None):
        try:
            state = _model_state(model)
            if optimizer is not None:
                state["optimizer"] = optimizer.sharded_state_dict(
                    state["model"] if len(model) == 1 else state)
            if scheduler is not None:
                state["scheduler"] = scheduler.state_dict()
            if reference is not None:
                state["reference"] = unwrap(reference[0]).sharded_state_dict(prefix="reference.")
            state["iteration"] = iteration
            dist_checkpointing.save(state, tmp)
            if rank == 0 and shape is not None:
                _write_atomic(os.path.join(tmp, "model_shape.json"), shape.to_json())
            if extra is not None:
                path = rank_state_path(tmp, rank)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                torch.save(extra, path)
        except Exception as e:  # noqa: BLE001
            error = e
    elif error is None:
        error = "another rank failed to prepare the save"
    if not _all_ok(error is None):
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        reason = error if error is not None else "another rank failed while writing"
        last = read_tracker(root) if os.path.isdir(root) else None
        raise CheckpointSaveError(
            f"saving iteration {iteration} to {root} failed ({reason}); nothing of it was kept, "
            f"the last complete checkpoint ({'none' if last is None else 'iteration ' + last}) is "
            "untouched") from (error if isinstance(error, BaseException) else None)
    if rank == 0:
        old = final + ".old"
        if os.path.isdir(final):  # a previous save of this iteration (never the tracker's dir
            os.replace(final, old)  # while the tracker names it for longer than two renames)
        os.replace(tmp, final)
        _fsync_dir(root)
        _write_atomic(os.path.join(root, TRACKER), str(iteration))
        _fsync_dir(root)
        shutil.rmtree(old, ignore_errors=True)
        if shape is not None:  # the converters read SAVE/model_shape.json
            _write_atomic(os.path.join(root, "model_shape.json"), shape.to_json())
    dist.barrier()
    return final


def _all_ok(ok: bool) -> bool:
    """True when ``ok`` on every rank (a MIN all-reduce; also the barrier between save phases)."""
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    if torch.cuda.is_available() and dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def load_checkpoint(root: str, model: List, optimizer=None, scheduler=None,
                    finetune: bool = False) -> int:
    """Load the tracker's checkpoint into ``model`` (and optimizer/scheduler when given and present).
    Returns the iteration to resume from (0 for ``release`` checkpoints or ``finetune``)."""
    ckpt = resolve_checkpoint_dir(root)
    tag = read_tracker(root)
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


def load_reference(root: str, reference: List) -> None:
    """The KL reference model saved with the tracker's checkpoint (``reference.*`` keys)."""
    ckpt = iteration_dir(root, read_tracker(root))
    model = unwrap(reference[0])
    loaded = dist_checkpointing.load({"reference": model.sharded_state_dict(prefix="reference.")},
                                     ckpt)
    model.load_state_dict({k[len("reference."):]: v for k, v in loaded["reference"].items()},
                          strict=True)
