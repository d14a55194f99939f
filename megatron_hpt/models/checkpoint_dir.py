"""Megatron-LM's checkpoint directory layout, the one reader of it for training and conversion.

``SAVE/latest_checkpointed_iteration.txt`` (the tracker) holds an iteration number, or
``release`` for converted weights; ``SAVE/iter_0000010/`` or ``SAVE/release/`` is the checkpoint
it names.
"""
from __future__ import annotations

import os
from typing import Optional

TRACKER = "latest_checkpointed_iteration.txt"


def iteration_dir(root: str, iteration) -> str:
    """``root/release`` or ``root/iter_%07d``."""
    name = "release" if iteration == "release" else f"iter_{int(iteration):07d}"
    return os.path.join(root, name)


def read_tracker(root: str) -> Optional[str]:
    """The tracker's content (``"release"`` or an iteration number as text), None if absent;
    ValueError naming the file for anything else."""
    path = os.path.join(root, TRACKER)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        text = f.read().strip()
    if text != "release" and not text.isdigit():
        raise ValueError(f"{path}: expected an iteration number or 'release', got {text!r}")
    return text


def resolve_checkpoint_dir(root: str) -> str:
    """The checkpoint directory the tracker of ``root`` names; FileNotFoundError naming the
    file when the tracker or that directory is missing."""
    tag = read_tracker(root)
    if tag is None:
        raise FileNotFoundError(f"{os.path.join(root, TRACKER)}: no tracker file; is {root!r} a "
                                "megatron-hpt/Megatron-LM save dir?")
    path = iteration_dir(root, tag)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: named by {os.path.join(root, TRACKER)} but missing")
    return path
