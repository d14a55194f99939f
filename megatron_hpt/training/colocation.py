"""The trainer's side of the colocation memory choreography: ``--offload-train`` and
``--offload-reference``, what leaves the GPU and when.

One GPU holds the Megatron trainer and one shard of a rollout engine (vLLM). An RL step moves
memory between them in this order (``rollout/trainer_engine.TrainerEngine.generate`` runs it;
the phases are ``rollout/phases.py``'s):

    training  train step (everything of the trainer on the device; vLLM asleep, level 2)
    -> sync   grads + optimizer state -> host, allocator cache emptied (``release_optimizer_state``)
              vLLM wakes its weights (``wake_up(tags=["weights"])``), the weight stream runs:
              it reads the Megatron params, which are still on the device
    -> rollout params -> host, cache emptied (``release_params``); vLLM wakes its KV cache
              (``wake_up(tags=["kv_cache"])``) and generates; then ``sleep(level=2)``: weights
              and KV cache dropped (the next stream re-sends the weights, no host copy of them)
    -> training params, grads and optimizer state back, bit for bit (``restore``)

Why the params stay for the stream (verl's order) and are not streamed from a host copy
(slime keeps a pinned CPU copy of the actor weights): the stream all-gathers TP shards and
broadcasts PP stages with NCCL, which needs device tensors; bucket by bucket from the host
would copy every byte host->device once more, and the params (2 B/param) fit next to vLLM's
weights once the grads (4 B) and optimizer state (12 B, or 12/DP) are gone. ``planning/memory.py``
sizes these phases (``sync``: params + vLLM weights + buckets; ``rollout``: vLLM alone).

The frozen KL reference (``--loss-kl-coef > 0``) lives in host memory and is brought to the
device for its forward pass only (``HostReference.resident``), after the rollout (when the
trainer is back).

Each transition logs ``<what>: offload|restore N GiB in S s`` (``training/offload.py``) on the
logging rank. Defaults: both flags on when the engine does not share the training weights
(vLLM) and CUDA is present, off otherwise; on CPU they can be forced on (tests: the storages are
really released, so any access out of order fails).
"""
from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

from megatron_hpt.training.offload import OFFLOADED, StorageOffloader, training_state_tensors


def add_colocation_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("colocation (the trainer and the rollout engine on the same GPUs)")
    g.add_argument("--offload-train", action=argparse.BooleanOptionalAction, default=None,
                   help="before each rollout phase move the Megatron grads and optimizer state, "
                        "then (after the weight stream) the params, to host memory and empty the "
                        "allocator cache; restored after generation. Default: on with an engine "
                        "that does not decode with the training weights (vllm) on CUDA")
    g.add_argument("--offload-reference", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the frozen KL reference (--loss-kl-coef > 0) in host memory, on the "
                        "device only for its forward pass. Default: as --offload-train")


@dataclass
class ColocationConfig:
    offload_train: bool = False
    """Training state to the host before each rollout phase (--offload-train, resolved)."""
    offload_reference: bool = False
    """The KL reference in host memory between uses (--offload-reference, resolved)."""


def _engine_shares_training_weights(name: str) -> bool:
    from megatron_hpt.rollout.engines import ENGINES
    spec = ENGINES.get(name)
    return spec is None or bool(spec.engine.shares_training_weights)


def colocation_config_from_args(args: argparse.Namespace) -> ColocationConfig:
    """The flags, ``None`` (auto) resolved: on for an RL run whose engine keeps its own weights
    (vllm) on CUDA."""
    auto = (args.loss_preset != "sft" and not _engine_shares_training_weights(args.rollout_engine)
            and torch.cuda.is_available())
    train = auto if args.offload_train is None else args.offload_train
    ref = train if args.offload_reference is None else args.offload_reference
    return ColocationConfig(offload_train=bool(train), offload_reference=bool(ref))


def colocation_errors(cfg) -> List[str]:
    """What is wrong with the colocation flags of ``cfg`` (each message names its flag). The
    defaults never trip these: only a flag given explicitly can."""
    e, colo = [], cfg.colocation
    if colo.offload_train and cfg.loss_preset == "sft":
        e.append("--offload-train applies to RL runs (rollout phases); --loss-preset sft has none")
    elif colo.offload_train and _engine_shares_training_weights(cfg.rollout.engine):
        e.append(f"--offload-train: --rollout-engine {cfg.rollout.engine} decodes with the "
                 "training weights, which cannot leave the device while it generates; use "
                 "--rollout-engine vllm or drop the flag")
    u = cfg.rollout.gpu_memory_utilization
    if not 0.0 < u <= 1.0:
        e.append(f"--rollout-gpu-memory-utilization {u} must be in (0, 1]")
    return e


# ------------------------------------------------------------------ the training state
def split_training_state(model_chunks, optimizer) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """(params, the rest): the tensors over the model params' storages (and DDP's param
    buffers), and those over every other storage of the training state (main-grad buffers,
    fp32 main params, optimizer state). No storage is in both lists."""
    params: List[torch.Tensor] = []
    for chunk in model_chunks:
        params += [p.data for p in chunk.parameters()]
        for buf in list(getattr(chunk, "buffers", [])) + list(getattr(chunk, "expert_parallel_buffers", [])):
            if getattr(buf, "param_data", None) is not None:
                params.append(buf.param_data)
    keys = {t.untyped_storage()._cdata for t in params if t.numel()}
    rest = [t for t in training_state_tensors(model_chunks, optimizer)
            if t.numel() and t.untyped_storage()._cdata not in keys]
    return params, rest


class TrainingStateOffload:
    """``TrainerEngine.memory`` under --offload-train: what the trainer releases around a
    rollout phase. The optimizer state is read at each release (Adam's appears at step 1)."""

    def __init__(self, model_chunks, optimizer, log: Optional[Callable[[str], None]] = print):
        self.model_chunks, self.optimizer, self.log = list(model_chunks), optimizer, log
        self.params: Optional[StorageOffloader] = None
        self.rest: Optional[StorageOffloader] = None

    def release_optimizer_state(self) -> None:
        """Grads and optimizer state to the host (the params stay: the stream reads them)."""
        _, rest = split_training_state(self.model_chunks, self.optimizer)
        self.rest = StorageOffloader("train grads + optimizer", rest, self.log)
        self.rest.offload()

    def release_params(self) -> None:
        """The params to the host (after the weight stream)."""
        params, _ = split_training_state(self.model_chunks, self.optimizer)
        self.params = StorageOffloader("train params", params, self.log)
        self.params.offload()

    def restore(self) -> None:
        """Everything released back on the device, bit for bit."""
        for off in (self.params, self.rest):
            if off is not None and off.state == OFFLOADED:
                off.restore()
        self.params = self.rest = None

    @property
    def released(self) -> Tuple[bool, bool]:
        """(params on the host, grads + optimizer on the host)."""
        return tuple(off is not None and off.state == OFFLOADED for off in (self.params, self.rest))


# ------------------------------------------------------------------ the KL reference
class HostReference(list):
    """The frozen reference's model chunks (a list, as megatron's schedule takes them), whose
    weights live in host memory; ``with ref.resident():`` brings them to the device."""

    def __init__(self, chunks, log: Optional[Callable[[str], None]] = print):
        super().__init__(chunks)
        self.offloader = StorageOffloader(
            "KL reference", [p.data for c in chunks for p in c.parameters()], log)
        self.offloader.offload()

    def resident(self):
        return self.offloader.resident()


def reference_on_device(reference):
    """Context in which ``reference`` (a ``HostReference`` or plain chunks) is on the device."""
    return reference.resident() if isinstance(reference, HostReference) else contextlib.nullcontext()


def _log_on_logging_rank(message: str) -> None:
    from megatron_hpt.training.logging import is_logging_rank
    if is_logging_rank():
        print(f" colocation: {message}", flush=True)


def host_reference(cfg, chunks: list):
    """``chunks`` moved to the host when the run says so (--offload-reference), else as they are."""
    colo = getattr(cfg, "colocation", None)
    if colo is None or not colo.offload_reference:
        return chunks
    return HostReference(chunks, _log_on_logging_rank)


def attach(cfg, task, model_chunks, optimizer) -> Optional[TrainingStateOffload]:
    """--offload-train: hand the RL task's rollout engine the trainer's side of the choreography
    (``TrainerEngine.memory``); an engine with its own weights logs its transitions. Returns the
    memory side, or None when the run keeps its state on the device."""
    engine = getattr(task, "engine", None)
    if engine is None:
        return None
    if not engine.engine.shares_training_weights:
        engine.log = _log_on_logging_rank  # the engine's transitions: wake, stream, sleep
    colo = getattr(cfg, "colocation", None)
    if colo is None or not colo.offload_train:
        return None
    engine.memory = TrainingStateOffload(model_chunks, optimizer, _log_on_logging_rank)
    return engine.memory
