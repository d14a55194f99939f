"""The phase of a colocated RL step, as a small state machine that refuses wrong transitions.

One GPU holds the Megatron trainer and a rollout engine shard; they take turns:

    training --> sync --> rollout --> training      (the engine needs the new weights)
    training ----------> rollout --> training      (it already holds them)

``training``: the training state (params, grads, optimizer) is on the device; the engine sleeps.
``sync``: the weight stream runs; grads and optimizer state are on the host, the params are
still on the device (the stream reads them), the engine's weights are awake, its KV cache not.
``rollout``: the engine generates; with ``--offload-train`` nothing of the trainer is on the
device. Any other move (``training -> training``, ``sync -> training``, ``rollout -> sync``...)
raises ``PhaseError`` naming both phases. Used by ``rollout/trainer_engine.TrainerEngine``; the
planner (``planning/memory.py``) sizes the same three phases.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

TRAINING, SYNC, ROLLOUT = "training", "sync", "rollout"

#: phase -> the phases it may move to
ALLOWED: Dict[str, Tuple[str, ...]] = {
    TRAINING: (SYNC, ROLLOUT),
    SYNC: (ROLLOUT,),
    ROLLOUT: (TRAINING,),
}


class PhaseError(RuntimeError):
    """A transition the colocation choreography does not allow."""


class PhaseMachine:
    """The current phase and every phase entered so far (``history``)."""

    def __init__(self, start: str = TRAINING):
        if start not in ALLOWED:
            raise PhaseError(f"unknown phase {start!r}; phases are {tuple(ALLOWED)}")
        self.phase = start
        self.history: List[str] = [start]

    def to(self, phase: str) -> None:
        """Move to ``phase``; PhaseError if the choreography does not allow it from here."""
        if phase not in ALLOWED:
            raise PhaseError(f"unknown phase {phase!r}; phases are {tuple(ALLOWED)}")
        if phase not in ALLOWED[self.phase]:
            raise PhaseError(f"phase {self.phase} -> {phase} is not allowed; from {self.phase} "
                             f"the next phase is one of {ALLOWED[self.phase]}")
        self.phase = phase
        self.history.append(phase)

    def require(self, phase: str, what: str) -> None:
        """PhaseError unless the current phase is ``phase`` (``what`` names the caller)."""
        if self.phase != phase:
            raise PhaseError(f"{what} needs phase {phase}, but the step is in phase {self.phase}")
