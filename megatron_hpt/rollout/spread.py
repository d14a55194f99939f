"""One rollout batch generated over all rollout engines, its samples delivered to the ranks that
train them (the plan: ``rollout/assignment.py``).

    samples = generate_batch(engine, batch_prompts, n, sampling, layout)

Every rank of the job calls it together with the whole batch's prompts and the batch's
``SamplingParams`` (seed = the batch seed). Each engine generates its block of prompts, each
prompt from its own seed (``assignment.prompt_seed``); the result is this rank's DP replica's
samples, ``prompt_index`` counted within the replica's prompts, prompt-major as ``generate``
returns them.

What moves (separate engines, e.g. vLLM): per batch, one ``all_to_all_single`` of the message
sizes (one int per rank pair), then one ``all_to_all_single`` of int32 buffers: the first rank
of each engine sends to every rank of the replica that trains a prompt of its block (all TP, PP
and CP ranks of it) those prompts' samples, per sample 4 header ints (prompt, sample, finish
reason, length) + the response tokens + their float32 log-probs (bit-cast), i.e. about 8 bytes
per response token per receiving rank. Prompt tokens do not move (every rank reads the batch's
prompts itself). With the shared engine (embedded) each replica generates its own prompts and
nothing moves. The layout itself (``current_layout``): one all_gather of one int per rank.

``SpreadEngine`` does the same for calls whose samples every rank needs (the trainer's held-out
evaluation): each engine generates a block, every rank receives all samples.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Sequence

import torch
import torch.distributed as dist

from megatron_hpt.rollout.assignment import (RolloutLayout, owned_prompts, plan_rollout,
                                             prompt_seed, rollout_tensor_parallel_size)
from megatron_hpt.rollout.protocol import FINISH_REASONS, RolloutSample, SamplingParams

_HEADER = 4  # prompt, sample, finish reason, response length


def layout_of(cfg) -> RolloutLayout:
    """The running job's rollout layout for a training config (``current_layout`` with
    --rollout-tensor-parallel-size and whether the engine is the training model)."""
    from megatron_hpt.rollout.engines import engine_spec
    return current_layout(rollout_tensor_parallel_size(cfg),
                          engine_spec(cfg.rollout.engine).engine.shares_training_weights)


def current_layout(rollout_tp: int, shared: bool) -> RolloutLayout:
    """The layout of the running job: every rank's training DP rank, gathered from megatron's
    parallel state (one all_gather of one int per rank); a single process without
    torch.distributed is a world of one."""
    from megatron.core import parallel_state
    if not dist.is_initialized():
        return RolloutLayout((0,), rollout_tp, shared)
    from megatron_hpt import platform
    mine = torch.tensor([parallel_state.get_data_parallel_rank()], dtype=torch.long,
                        device=platform.device())
    every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return RolloutLayout(tuple(int(t) for t in every), rollout_tp, shared)


def generate_batch(engine, batch_prompts: Sequence[Sequence[int]], n: int,
                   sampling: SamplingParams, layout: RolloutLayout) -> List[RolloutSample]:
    """This rank's DP replica's samples of the batch (see the module docstring). ``engine``:
    anything with the protocol's ``generate``; ``sampling.seed``: the batch seed (per-prompt
    seeds are derived from it and the prompts' batch indices)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    plan = plan_rollout(layout, len(batch_prompts))
    if not all(len(block) for block in plan.engine_prompts):
        # an engine without prompts would skip generate, where the weight stream runs
        raise ValueError(f"{len(batch_prompts)} prompts for {len(plan.engine_prompts)} rollout "
                         f"engines: raise --rollout-batch-size or --rollout-tensor-parallel-size")
    mine = owned_prompts(plan, rank)
    seeds = None if sampling.seed is None else tuple(prompt_seed(sampling.seed, p) for p in mine)
    samples = engine.generate([batch_prompts[p] for p in mine], n,
                              replace(sampling, prompt_seeds=seeds))
    if layout.shared:  # the replica generated exactly the prompts it trains
        return samples
    by_prompt: Dict[int, List[RolloutSample]] = {}
    for s in samples:
        by_prompt.setdefault(mine[s.prompt_index], []).append(s)
    received = _exchange(plan.sends(rank), plan.receives(rank), by_prompt, n)
    train = plan.train_prompts[layout.dp_rank_of[rank]]
    out = []
    for p in train:
        for j, (tokens, logprobs, reason) in enumerate(received[p]):
            out.append(RolloutSample(prompt_index=p - train.start, response_token_ids=tokens,
                                     logprobs=logprobs, finish_reason=reason,
                                     prompt_token_ids=list(batch_prompts[p])))
    return out


class SpreadEngine:
    """``engine`` for a call whose samples every rank needs (the held-out evaluation grades all
    problems on every rank): the prompts are generated once over all engines and every rank
    receives all samples. The shared (embedded) engine, or fewer prompts than engines, falls
    back to ``engine.generate`` on every rank (each engine decodes every prompt)."""

    def __init__(self, engine, layout: RolloutLayout):
        self.engine = engine
        self.layout = RolloutLayout((0,) * layout.world_size, layout.rollout_tp, layout.shared)

    def generate(self, prompt_token_ids, n: int, sampling: SamplingParams) -> List[RolloutSample]:
        if self.layout.shared or len(prompt_token_ids) < len(self.layout.engines()):
            return self.engine.generate(prompt_token_ids, n, sampling)
        return generate_batch(self.engine, prompt_token_ids, n, sampling, self.layout)


def _pack(prompts: Sequence[int], by_prompt: Dict[int, List[RolloutSample]], n: int) -> torch.Tensor:
    parts = []
    for p in prompts:
        if len(by_prompt.get(p, ())) != n:
            raise RuntimeError(f"the rollout engine returned {len(by_prompt.get(p, ()))} samples "
                               f"for prompt {p} of the batch, expected {n}")
        for j, s in enumerate(by_prompt[p]):
            length = len(s.response_token_ids)
            parts.append(torch.tensor([p, j, FINISH_REASONS.index(s.finish_reason), length],
                                      dtype=torch.int32))
            parts.append(torch.tensor(s.response_token_ids, dtype=torch.int32))
            parts.append(torch.tensor(s.logprobs, dtype=torch.float32).view(torch.int32))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int32)


def _unpack(buffer: torch.Tensor, expected: Sequence[int], n: int, source: int):
    """{prompt: [(tokens, logprobs, finish reason)] * n} from one source's buffer."""
    out: Dict[int, list] = {}
    at = 0
    while at < buffer.numel():
        p, j, reason, length = (int(v) for v in buffer[at:at + _HEADER])
        at += _HEADER
        tokens = buffer[at:at + length].tolist()
        logprobs = buffer[at + length:at + 2 * length].view(torch.float32).tolist()
        at += 2 * length
        out.setdefault(p, []).append((tokens, logprobs, FINISH_REASONS[reason]))
        if len(out[p]) != j + 1:
            raise RuntimeError(f"rank {source} sent sample {j} of prompt {p} out of order")
    if sorted(out) != sorted(expected) or any(len(v) != n for v in out.values()):
        raise RuntimeError(f"rank {source} sent samples of prompts {sorted(out)}, expected "
                           f"{list(expected)} with {n} samples each")
    return out


def _exchange(sends: Dict[int, List[int]], receives: Dict[int, List[int]],
              by_prompt: Dict[int, List[RolloutSample]], n: int) -> Dict[int, list]:
    """Send each destination its prompts' samples and collect this rank's (one all_to_all of
    sizes, one of the int32 payloads). Single process: a local copy."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    outgoing = [_pack(sends.get(r, ()), by_prompt, n) for r in range(world)]
    if world == 1:
        incoming = outgoing
    else:
        from megatron_hpt import platform
        device = platform.device()
        send_sizes = torch.tensor([t.numel() for t in outgoing], dtype=torch.long, device=device)
        recv_sizes = torch.zeros_like(send_sizes)
        dist.all_to_all_single(recv_sizes, send_sizes)
        recv = torch.zeros(int(recv_sizes.sum()), dtype=torch.int32, device=device)
        dist.all_to_all_single(recv, torch.cat(outgoing).to(device),
                               output_split_sizes=recv_sizes.tolist(),
                               input_split_sizes=send_sizes.tolist())
        incoming = list(recv.cpu().split(recv_sizes.tolist()))
    received: Dict[int, list] = {}
    for source, prompts in receives.items():
        received.update(_unpack(incoming[source], prompts, n, source))
    return received
