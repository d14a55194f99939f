"""What every rollout engine takes and returns, and the one protocol they share.

Engines (``embedded.EmbeddedEngine``, ``vllm_engine.VllmEngine``) are called the same way on every
rank of a tensor-parallel group, with the same prompts and the same ``SamplingParams``; each rank
gets back the same samples. Nothing here imports megatron-core or vLLM.

Log-prob convention (the trainer relies on it): ``RolloutSample.logprobs[t]`` is
``log_softmax(logits_t / T)[token_t]`` over the FULL vocabulary, taken BEFORE top-k/top-p
truncation. That is exactly what the trainer's recompute (logits / T, vocab-parallel log-softmax,
gathered at the sampled tokens) produces, so with unchanged weights the importance ratio is 1.
The truncated-and-renormalised distribution is only used to draw the token. For greedy decoding
(``temperature == 0``) the log-probs are taken at T = 1 (``log_softmax(logits)``), as vLLM does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch

FINISH_REASONS = ("eos", "stop", "length")

#: One bucket of a weight stream: (Hugging Face parameter name, full unsharded tensor) pairs.
WeightBucket = List[Tuple[str, torch.Tensor]]
#: What ``update_weights`` consumes: buckets in order, each bounded in bytes by the producer.
WeightStream = Iterable[WeightBucket]


@dataclass(frozen=True)
class SamplingParams:
    # ---------------- distribution ----------------
    temperature: float = 1.0
    """Logits are divided by this before sampling; 0 means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p; 1 = off."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 = off."""
    # ---------------- length and stopping ----------------
    max_new_tokens: int = 256
    """At most this many response tokens per sample (finish reason ``length``)."""
    eos_token_ids: Tuple[int, ...] = ()
    """End-of-sequence ids: sampling one ends the sample with finish reason ``eos``."""
    stop_token_ids: Tuple[int, ...] = ()
    """Extra stop ids: sampling one ends the sample with finish reason ``stop``. The terminating
    token (eos or stop) is part of the response and has a log-prob, like any sampled token."""
    # ---------------- randomness ----------------
    seed: int | None = None
    """Seed of the sampling generator; the same seed on every TP rank gives the same samples. A
    trainer folds in the iteration and data-parallel rank so DP replicas draw different samples."""

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        object.__setattr__(self, "eos_token_ids", tuple(int(t) for t in self.eos_token_ids))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class RolloutSample:
    prompt_index: int
    """Index of the prompt in the ``generate`` call; samples come prompt-major (n per prompt)."""
    response_token_ids: List[int]
    """Generated tokens, including the terminating eos/stop token when there is one."""
    logprobs: List[float]
    """Per response token: log_softmax(logits / T) at the sampled token (see module docstring)."""
    finish_reason: str
    """``eos``, ``stop`` (a stop_token_id) or ``length`` (max_new_tokens reached)."""
    prompt_token_ids: List[int] = field(default_factory=list)
    """The prompt this sample continues (copied for the trainer's convenience)."""


@runtime_checkable
class RolloutEngine(Protocol):
    """The interface a training loop sees. Every method is called on all ranks of the engine's
    tensor-parallel group (collectives may run inside)."""

    #: True when the engine runs on the training parameters themselves, so ``update_weights``
    #: has nothing to copy (a trainer may skip exporting weights for it).
    shares_training_weights: bool

    def generate(self, prompt_token_ids: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> List[RolloutSample]:
        """``n`` samples for each prompt, all ``len(prompts) * n`` decoded as one batch."""
        ...

    def update_weights(self, stream: WeightStream) -> None:
        """Consume a weight stream (Hugging Face names, full shapes) and serve it from now on."""
        ...

    def sleep(self, level: int = 1) -> None:
        """Release what the engine holds between rollout phases: level 1 frees the KV cache and
        offloads the weights to host memory; level 2 frees both (the next ``update_weights``
        sends every weight). vLLM's levels; an engine without sleep mode does nothing."""
        ...

    def wake_up(self, tags: Optional[Sequence[str]] = None) -> None:
        """Undo ``sleep`` before the next ``generate``: ``tags`` ``["weights"]`` (before
        ``update_weights``), ``["kv_cache"]``, or None for everything still asleep."""
        ...

    def shutdown(self) -> None:
        """Release what the engine owns for good (the trainer's process groups stay usable)."""
        ...

    # An engine class also provides the constructor the trainer and the evaluation tool use:
    #   from_policy(model_chunks, shape, tokenizer, *, tensor_parallel_size, seed,
    #               max_model_len, params_dtype, hf_dir=None) -> engine
    # (an engine that does not share the training weights starts with placeholder weights that
    # the first ``update_weights`` replaces); registered by name in ``engines.ENGINES``.
