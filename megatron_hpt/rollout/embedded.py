"""The embedded engine: decoding with the training GPTModel itself, no second copy of the weights.

A short loop over ``GPTModel.forward(inference_context=StaticInferenceContext)``: one prefill of
the left-padded prompts, then one token per step with megatron-core's static KV cache. All
``len(prompts) * n`` samples are one batch. Nothing else of megatron's inference stack is used
(its engines set a process-wide inference flag that breaks later training forwards).

Parallelism (what is sharded, what moves):
- Weights and the KV cache stay sharded as in training: each TP rank caches its own heads
  ([s, b, heads/TP, head_dim] per layer). Per step megatron runs its usual TP collectives and
  gathers the logits over the vocabulary (``runtime_gather_output=True``: [b, 1, V] on every rank).
- Every TP rank samples with the same seeded generator (one per call, or one per row with
  ``SamplingParams.prompt_seeds``); the tokens and log-probs of TP source rank
  are then broadcast in the TP group (one [2, b] broadcast per step), so all ranks provably hold
  identical samples. Pipeline and context parallelism and sequence parallelism are refused with a
clear error (use the vLLM engine there).

Weights: the engine runs on the training parameters, so ``update_weights`` has nothing to load
(``shares_training_weights = True``); it still accepts a stream and drains it, so a producer
that runs collectives while it yields buckets completes on every rank.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.distributed as dist

from megatron_hpt import platform
from megatron_hpt.rollout.protocol import RolloutSample, SamplingParams, WeightStream
from megatron_hpt.rollout.sampling import draw, make_generator, row_generators


def _tp_group_and_src():
    """megatron's TP group and its source rank, or (None, 0) outside megatron's parallel state."""
    from megatron.core import parallel_state as ps
    if not (dist.is_initialized() and ps.model_parallel_is_initialized()):
        return None, 0
    if ps.get_pipeline_model_parallel_world_size() > 1:
        raise ValueError("the embedded rollout engine needs --pipeline-model-parallel-size 1 "
                         f"(got {ps.get_pipeline_model_parallel_world_size()}); "
                         "use --rollout-engine vllm with pipeline parallelism")
    if ps.get_context_parallel_world_size() > 1:
        raise ValueError("the embedded rollout engine needs --context-parallel-size 1 "
                         f"(got {ps.get_context_parallel_world_size()}); use --rollout-engine vllm")
    if ps.get_tensor_model_parallel_world_size() == 1:
        return None, 0
    return ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_src_rank()


class EmbeddedEngine:
    """Rollouts from the training model (a megatron-core ``GPTModel``, optionally DDP-wrapped)."""

    shares_training_weights = True

    def __init__(self, model: torch.nn.Module, pad_token_id: int = 0,
                 max_sequence_length: Optional[int] = None):
        """``model``: this rank's TP shard of the policy (PP = 1). ``pad_token_id``: fills the left
        padding and finished rows (never attended to). ``max_sequence_length``: prompt + response
        limit checked before decoding (default: no check beyond the model's own)."""
        from megatron_hpt.models.unwrap import unwrap_model
        config = getattr(unwrap_model(model), "config", None)
        if getattr(config, "sequence_parallel", False):
            raise ValueError("the embedded rollout engine cannot decode with --sequence-parallel "
                             "(one token per step cannot be split over TP ranks); "
                             "use --rollout-engine vllm")
        self.model = model
        self.pad_token_id = int(pad_token_id)
        self.max_sequence_length = max_sequence_length
        self._tp_group, self._tp_src = _tp_group_and_src()  # refuses PP > 1 and CP > 1 up front

    @classmethod
    def from_policy(cls, model_chunks, shape, tokenizer, *, max_model_len: Optional[int] = None,
                    **_unused) -> "EmbeddedEngine":
        """The engine on this rank's policy chunk itself (PP = 1: one chunk). ``max_model_len``:
        prompt + response limit. The other ``from_policy`` arguments of the protocol (TP size,
        seed, dtype, HF directory) are the policy's own here and are ignored."""
        pad = tokenizer.pad_token_id
        return cls(model=model_chunks[0], pad_token_id=0 if pad is None else pad,
                   max_sequence_length=max_model_len)

    # ------------------------------------------------------------------ protocol
    def generate(self, prompt_token_ids: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> List[RolloutSample]:
        if n < 1 or not prompt_token_ids or any(len(p) == 0 for p in prompt_token_ids):
            raise ValueError(f"need n >= 1 and non-empty prompts (n={n}, "
                             f"prompt lengths={[len(p) for p in prompt_token_ids]})")
        if sampling.prompt_seeds is not None and len(sampling.prompt_seeds) != len(prompt_token_ids):
            raise ValueError(f"{len(sampling.prompt_seeds)} prompt_seeds for "
                             f"{len(prompt_token_ids)} prompts")
        rows = [list(map(int, p)) for p in prompt_token_ids for _ in range(n)]
        was_training = self.model.training
        self.model.eval()  # megatron uses the KV cache only when not training
        try:
            with torch.no_grad():
                tokens, logprobs, lengths, reasons = self._decode(rows, sampling, n)
        finally:
            self.model.train(was_training)
        return [RolloutSample(prompt_index=i // n,
                              response_token_ids=tokens[i, :lengths[i]].tolist(),
                              logprobs=logprobs[i, :lengths[i]].tolist(),
                              finish_reason=reasons[i],
                              prompt_token_ids=rows[i])
                for i in range(len(rows))]

    def update_weights(self, stream: WeightStream) -> None:
        """No-op by construction (the engine decodes with the training parameters); the stream
        is drained so that a collective-driven producer finishes on every rank."""
        for _bucket in stream:
            pass

    def sleep(self, level: int = 1) -> None:
        """Nothing to release: the KV cache lives only inside ``generate`` and the weights are
        the trainer's."""

    def wake_up(self, tags: Optional[Sequence[str]] = None) -> None:
        """Nothing to restore (see ``sleep``)."""

    def shutdown(self) -> None:
        """Nothing to release: the model belongs to the trainer."""

    # ------------------------------------------------------------------ decoding loop
    def _decode(self, rows: List[List[int]], sampling: SamplingParams, n: int):
        """Static-batch decoding. Returns tokens [b, T], logprobs [b, T], lengths [b], reasons."""
        from megatron.core.inference.contexts import StaticInferenceContext

        device = next(self.model.parameters()).device
        b, prompt_len, new = len(rows), max(len(r) for r in rows), sampling.max_new_tokens
        total = prompt_len + new
        if self.max_sequence_length is not None and total > self.max_sequence_length:
            raise ValueError(f"longest prompt ({prompt_len}) + max_new_tokens ({new}) = {total} "
                             f"exceeds max_sequence_length ({self.max_sequence_length})")
        ids = torch.full((b, total), self.pad_token_id, dtype=torch.long, device=device)
        valid = torch.zeros((b, total), dtype=torch.bool, device=device)  # real (non-pad) tokens
        for i, r in enumerate(rows):  # left padding: every prompt ends at column prompt_len - 1
            ids[i, prompt_len - len(r):prompt_len] = torch.tensor(r, device=device)
            valid[i, prompt_len - len(r):prompt_len] = True
        eos = torch.tensor(sampling.eos_token_ids, dtype=torch.long, device=device)
        stop = torch.tensor(sampling.stop_token_ids, dtype=torch.long, device=device)
        out_tokens = torch.full((b, new), self.pad_token_id, dtype=torch.long, device=device)
        out_logprobs = torch.zeros((b, new), dtype=torch.float32, device=device)
        lengths = torch.zeros(b, dtype=torch.long, device=device)
        reason = torch.zeros(b, dtype=torch.long, device=device)  # 0 running, 1 eos, 2 stop
        tp_group, tp_src = self._tp_group, self._tp_src
        generator = (make_generator(sampling.seed) if sampling.prompt_seeds is None
                     else row_generators(sampling.prompt_seeds, n))
        context = StaticInferenceContext(max_batch_size=b, max_sequence_length=total)
        causal = torch.ones(prompt_len, prompt_len, dtype=torch.bool, device=device).triu(1)
        cur = prompt_len
        for step in range(new):
            start = 0 if step == 0 else cur - 1
            # megatron masks where True: [b, 1, q, k]; prefill adds the causal part
            mask = ~valid[:, None, None, :cur]
            if step == 0:
                mask = mask | causal[None, None]
            positions = (valid[:, :cur].long().cumsum(-1) - 1).clamp(min=0)[:, start:cur]
            with platform.model_compute():
                logits = self.model(ids[:, start:cur], positions, mask, inference_context=context,
                                    runtime_gather_output=True)  # [b, 1, V] (last position only)
            context.sequence_len_offset += cur - start
            if step == 0:
                context.enable_decode_mode()
            token, logprob = draw(logits[:, -1, :], sampling, generator)
            if tp_group is not None:  # all TP ranks keep the source rank's draw
                both = torch.stack([token.double(), logprob.double()])
                dist.broadcast(both, src=tp_src, group=tp_group)
                token, logprob = both[0].long(), both[1].float()
            running = reason == 0
            token = torch.where(running, token, self.pad_token_id)
            ids[:, cur], valid[:, cur] = token, running
            out_tokens[:, step], out_logprobs[:, step] = token, logprob
            lengths += running.long()
            reason = torch.where(running & torch.isin(token, eos), 1, reason)
            reason = torch.where((reason == 0) & torch.isin(token, stop), 2, reason)
            cur += 1
            if bool((reason != 0).all()):
                break
        names = {0: "length", 1: "eos", 2: "stop"}
        return (out_tokens.cpu(), out_logprobs.cpu(), lengths.tolist(),
                [names[int(r)] for r in reason.tolist()])
