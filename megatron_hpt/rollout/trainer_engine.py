"""The rollout engine as a training loop holds it: built from the training config, fed the
current weights before each rollout phase, put to sleep after it.

    engine = TrainerEngine(cfg, model, tokenizer)
    samples = engine.generate(prompt_ids, n, sampling)   # syncs weights first if they changed
    ...optimizer step...
    engine.weights_changed()

``embedded`` decodes with the training model itself (nothing to sync; it "sleeps" at level 1,
a no-op). ``vllm`` starts a colocated vLLM (TP = ``--rollout-tensor-parallel-size``, default the
training TP; external launcher: consecutive ranks form one engine, rollout/assignment.py) from
the HF config of the model, with dummy weights, and receives the Megatron weights through
``export_hf_weights`` in buckets of ``--rollout-weight-bucket-mb`` before each rollout phase.

One ``generate`` is one rollout phase of the colocation choreography (``rollout/phases.py``;
``training/colocation.py`` says what moves and why in this order):

    training -> sync     memory.release_optimizer_state()   grads + optimizer -> host (--offload-train)
                         engine.wake_up(tags=["weights"])   (if asleep)
                         engine.update_weights(stream)      reads the params, still on the device
             -> rollout  memory.release_params()            params -> host
                         engine.wake_up(tags=["kv_cache"])  (if asleep)
                         engine.generate(...)
                         engine.sleep(level=2)              weights dropped: the next phase re-streams
             -> training memory.restore()                   the training state back, bit for bit

(``sync`` is skipped when the engine already holds the current weights; ``memory`` is None
without --offload-train.)
"""
from __future__ import annotations

import time
from typing import List, Sequence

import torch

from megatron_hpt.rollout.assignment import rollout_tensor_parallel_size
from megatron_hpt.rollout.engines import engine_for_policy
from megatron_hpt.rollout.phases import ROLLOUT, SYNC, TRAINING, PhaseMachine
from megatron_hpt.rollout.protocol import RolloutSample, SamplingParams


def _counted(stream, sent: list):
    """The weight stream, adding each bucket's bytes to ``sent[0]``."""
    for bucket in stream:
        sent[0] += sum(t.numel() * t.element_size() for _, t in bucket)
        yield bucket


class TrainerEngine:
    """A rollout engine plus the bookkeeping of whose weights it serves."""

    def __init__(self, cfg, model_chunks: Sequence[torch.nn.Module], tokenizer):
        self.cfg, self.model_chunks = cfg, list(model_chunks)
        self.name = cfg.rollout.engine
        # --hf-model gives config and tokenizer files; a flag-built shape gets its config
        self.engine = engine_for_policy(
            self.name, self.model_chunks, cfg.shape, tokenizer,
            tensor_parallel_size=rollout_tensor_parallel_size(cfg), seed=cfg.seed,
            max_model_len=cfg.seq_length + 1, params_dtype=cfg.params_dtype, hf_dir=cfg.hf_model,
            gpu_memory_utilization=cfg.rollout.gpu_memory_utilization)
        # an engine on the training parameters has nothing to sync; any other starts with
        # placeholder weights until the first stream
        self._stale = not self.engine.shares_training_weights
        #: an engine with its own weights sleeps at level 2 (weights dropped, re-sent by the
        #: next stream); one on the training weights at level 1 (there: nothing to release)
        self.sleep_level = 1 if self.engine.shares_training_weights else 2
        self._asleep = False
        self.phases = PhaseMachine()
        #: the trainer's side of the choreography (training/colocation.py), set by
        #: ``colocation.attach`` under --offload-train
        self.memory = None
        #: where the phase transitions are logged with bytes and seconds (None: not logged)
        self.log = None

    def weights_changed(self) -> None:
        """Call after each optimizer step: the next ``generate`` streams the new weights."""
        if not self.engine.shares_training_weights:
            self._stale = True

    def generate(self, prompt_token_ids: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> List[RolloutSample]:
        """One rollout phase (the module docstring's choreography)."""
        memory, engine = self.memory, self.engine
        self.phases.to(SYNC if self._stale else ROLLOUT)
        woke_weights = False
        if memory is not None:
            memory.release_optimizer_state()
        if self._stale:
            if self._asleep:
                self._timed("engine wake_up(weights)", engine.wake_up, tags=["weights"])
                woke_weights = True
            from megatron_hpt.rollout.weights import export_hf_weights
            sent = [0]
            stream = _counted(export_hf_weights(
                self.model_chunks, self.cfg.shape, self.cfg.rollout.weight_bucket_mb), sent)
            self._timed("weight stream", engine.update_weights, stream, sent=sent)
            self._stale = False
            self.phases.to(ROLLOUT)
        if memory is not None:
            memory.release_params()
        if self._asleep:
            tags = ["kv_cache"] if woke_weights else None
            self._timed(f"engine wake_up({'kv_cache' if tags else 'all'})", engine.wake_up, tags=tags)
        self._asleep = False
        try:
            return engine.generate(prompt_token_ids, n, sampling)
        finally:
            self._timed(f"engine sleep(level={self.sleep_level})", engine.sleep,
                        level=self.sleep_level)
            self._asleep = True
            if self.sleep_level == 2:
                self._stale = True  # the weights are gone: the next phase streams them again
            if memory is not None:
                memory.restore()
            self.phases.to(TRAINING)

    def _timed(self, what: str, fn, *args, sent=None, **kwargs):
        """``fn(*args, **kwargs)``, logged through ``self.log`` (when set) with its seconds, the
        bytes streamed (``sent``) and, on CUDA, the change in free device memory."""
        if self.log is None:
            return fn(*args, **kwargs)
        free = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        msg = f"{what}: " + (f"{sent[0] / 2**30:.3f} GiB " if sent else "")
        msg += f"in {time.perf_counter() - t0:.3f} s"
        if free is not None:
            msg += f" (free device memory {(torch.cuda.mem_get_info()[0] - free) / 2**30:+.3f} GiB)"
        self.log(msg)
        return out

    def shutdown(self) -> None:
        """Release the engine (vLLM: its engine core); the training process groups stay."""
        self.engine.shutdown()
