"""Step 1, sample: a rollout batch's prompts and this data-parallel replica's rollouts of them.

Every rank reads the whole batch's prompts (``batch_prompts``); the replica trains its own
``--rollout-batch-size / DP`` of them (``rank_prompts``), so the rows of a prompt stay on one
replica. ``sample`` has them generated, ``--n-samples-per-prompt`` each with the log-prob of
every sampled token: the vLLM engines (every ``--rollout-tensor-parallel-size`` consecutive
ranks, pipeline stages included) each generate a block of the batch and send the samples to the
replica that trains them; the embedded engine (the training model) generates each replica's own
prompts (``rollout/assignment.py``, ``rollout/spread.py``). One sampling seed per rollout batch
(``assignment.batch_seed``), one per prompt derived from it.
"""
from __future__ import annotations

from typing import List

from megatron_hpt.rollout import SamplingParams
from megatron_hpt.rollout.assignment import batch_seed
from megatron_hpt.rollout.spread import generate_batch, layout_of


def batch_prompts(source, index: int, batch_size: int) -> list:
    """The prompts of rollout batch ``index``: items [index·B, +B) of ``source`` (a
    ``data/prompts.PromptSource``)."""
    return source.items(index * batch_size, batch_size)


def rank_prompts(batch: list, per_rank: int, dp_rank: int) -> list:
    """Data-parallel rank ``dp_rank``'s prompts of a batch: [dp_rank·per_rank, +per_rank)
    (``assignment.plan_rollout``'s ``train_prompts``)."""
    return batch[dp_rank * per_rank:(dp_rank + 1) * per_rank]


def sampling_params(cfg, prompt_ids: List[List[int]], eos_token_id: int, seed: int,
                    index: int) -> SamplingParams:
    """The run's sampling flags; new tokens bounded by what ``--seq-length`` leaves after the
    longest prompt (an error naming the rollout batch when nothing is left)."""
    ro = cfg.rollout
    room = cfg.seq_length + 1 - max(map(len, prompt_ids))
    if room < 1:
        raise ValueError(f"{cfg.data_path}: a prompt of rollout batch {index} is "
                         f"{max(map(len, prompt_ids))} tokens, longer than --seq-length")
    return SamplingParams(
        temperature=ro.temperature, top_p=ro.top_p, top_k=ro.top_k,
        max_new_tokens=min(ro.max_response_len or room, room),
        eos_token_ids=(eos_token_id,), seed=seed)


def sample(engine, batch, cfg, index: int, eos_token_id: int, layout=None) -> list:
    """This replica's ``rollout.RolloutSample``s of rollout batch ``index`` (``batch``: all its
    prompts; the result: the replica's ``rank_prompts``, prompt-major, n per prompt,
    ``prompt_index`` counted within them) from ``engine`` (a ``rollout/trainer_engine
    .TrainerEngine``). Collective over the whole job. ``layout``: the job's
    ``assignment.RolloutLayout`` (default: ``spread.layout_of(cfg)``). The new tokens are bounded
    by the batch's longest prompt, so they do not depend on the data-parallel split."""
    prompt_ids = [p.prompt_ids for p in batch]
    params = sampling_params(cfg, prompt_ids, eos_token_id, batch_seed(cfg.seed, index), index)
    return generate_batch(engine, prompt_ids, cfg.rollout.n_samples_per_prompt, params,
                          layout if layout is not None else layout_of(cfg))
