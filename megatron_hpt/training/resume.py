"""What a checkpoint needs beyond weights, optimizer and scheduler for an exact resume.

Everything else a step reads is a pure function of (seed, iteration): the data cursor
(``PromptSource.items(iteration * batch, batch)``), the rollout sampling seeds
(``rollout/assignment.batch_seed(seed, rollout index)``, per prompt ``prompt_seed``), CHORD's μ
(``mu_at_step(iteration)``) and the HPT gate (a function of the rollout batch's rewards). What
is not, and is saved per rank in ``rank_state/rank_NNNNN.pt`` inside the checkpoint:

- the RNG streams: torch (CPU and CUDA), megatron's model-parallel tracker, numpy, python;
  restored unless ``--no-load-rng`` (and only at the world size they were saved at, as
  Megatron-LM does);
- the KL reference model (in the checkpoint itself, ``reference.*`` keys): the starting policy,
  which a resumed run must not replace by the loaded one;
- the skipped-iteration counters (the log's total and the current run of skips);
- the task's state: an RL task with several optimizer steps per rollout batch keeps the rows of
  the batch being trained (sampled by the policy before the first of those steps), so a resume
  in the middle of a batch trains on the same rows instead of sampling new ones from moved
  weights.

The file holds only tensors, numbers, strings, lists and dicts, and is read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import random
import sys
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist


def rng_state() -> dict:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "tracker": dict(get_cuda_rng_tracker().get_states()),
             "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def capture(task, skips=None) -> dict:
    """This rank's resume state, taken right after an optimizer step."""
    state = {"world_size": dist.get_world_size(), "rng": rng_state(),
             "task": task.state_dict() if hasattr(task, "state_dict") else {},
             "reference": getattr(task, "reference", None) is not None}
    if skips is not None:  # the log's `number of skipped iterations` and the current streak
        state["skips"] = [skips.total, skips.consecutive]
    return state


def save(cfg, iteration: int, model, optimizer, scheduler, task, skips=None) -> str:
    """``save_checkpoint`` with this rank's resume state and the task's KL reference model (the
    starting policy: after a resume it must not become the loaded one)."""
    from megatron_hpt.training.checkpoint import save_checkpoint
    return save_checkpoint(cfg.save, iteration, model, optimizer, scheduler, cfg.shape,
                           capture(task, skips), getattr(task, "reference", None),
                           keep_last=getattr(cfg, "keep_last", None))


def read(load_dir: str) -> Optional[dict]:
    """This rank's resume state of the tracker's checkpoint, or None (a converted checkpoint or
    one written before these files existed)."""
    from megatron_hpt.training.checkpoint import iteration_dir, rank_state_path, read_tracker
    tag = read_tracker(load_dir)
    if tag is None or tag == "release":
        return None
    path = rank_state_path(iteration_dir(load_dir, tag), dist.get_rank())
    if not os.path.isfile(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def restore(cfg, task, skips=None) -> None:
    """After the model, optimizer and task are built: the saved RNG streams (unless
    ``--no-load-rng``) and the task's state. A checkpoint saved at another world size resumes
    without them (said on rank 0): the numbers then differ from an uninterrupted run."""
    state = read(cfg.load)
    if state is None:
        return
    if skips is not None and "skips" in state:
        skips.total, skips.consecutive = (int(v) for v in state["skips"])
    if state.get("reference") and getattr(task, "reference", None) is not None:
        from megatron_hpt.training.checkpoint import load_reference
        load_reference(cfg.load, task.reference)  # any layout: the reference is resharded
    if state.get("world_size") != dist.get_world_size():
        if dist.get_rank() == 0:
            print(f" resume: {cfg.load} was saved by {state.get('world_size')} processes, this "
                  f"run has {dist.get_world_size()}: RNG streams and pending rollouts are not "
                  "restored", file=sys.stderr, flush=True)
        return
    if not cfg.no_load_rng:
        set_rng_state(state["rng"])
    if state.get("task") and hasattr(task, "load_state_dict"):
        task.load_state_dict(state["task"])
