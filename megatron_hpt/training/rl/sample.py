"""Step 1, sample: this data-parallel replica's prompts of a rollout batch and their rollouts.

Each replica takes its own ``--rollout-batch-size / DP`` prompts (``rank_prompts``), so the rows
of a prompt never leave the replica that sampled them, and asks the engine for
``--n-samples-per-prompt`` samples each, with the log-prob of every sampled token (``sample``).
"""
from __future__ import annotations

from typing import List

from megatron_hpt.rollout import SamplingParams


def rank_prompts(source, index: int, batch_size: int, per_rank: int, dp_rank: int) -> list:
    """Prompts of rollout batch ``index`` for data-parallel rank ``dp_rank``: items
    [index·B + dp_rank·per_rank, +per_rank) of ``source`` (a ``data/prompts.PromptSource``)."""
    return source.items(index * batch_size + dp_rank * per_rank, per_rank)


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


def sample(engine, problems, cfg, index: int, eos_token_id: int) -> list:
    """``rollout.RolloutSample``s of ``problems`` (prompt-major, n per prompt) from ``engine``
    (a ``rollout/trainer_engine.TrainerEngine``), seeded per replica and rollout batch."""
    prompt_ids = [p.prompt_ids for p in problems]
    params = sampling_params(cfg, prompt_ids, eos_token_id,
                             engine.data_parallel_seed(cfg.seed, index), index)
    return engine.generate(prompt_ids, cfg.rollout.n_samples_per_prompt, params)
