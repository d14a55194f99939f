"""Rank entry point of test_trained_export: the real trainer (``megatron_hpt.train.run``) trains a
converted Hugging Face model for 2 steps at a given layout and saves; the trained model's own
logits on fixed tokens are computed from the live model chunks (TP all-gather, PP hand-over)."""
from __future__ import annotations

from typing import List, Optional

import torch


def _live_logits(model, tokens: torch.Tensor) -> Optional[torch.Tensor]:
    """Full-vocabulary logits of the trainer's model chunks on ``tokens`` (the last pipeline
    stage returns them, other stages None). Stage s>0 receives the hidden states of stage s-1
    by a broadcast over the pipeline group."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron_hpt.training.checkpoint import unwrap

    chunk = unwrap(model[0])
    chunk.eval()
    pos = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    pp, stage = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    hidden = None
    with torch.no_grad():
        for s in range(pp):
            if s == stage:
                if s > 0:
                    chunk.set_input_tensor(hidden)
                out = chunk(tokens, pos, None)
                if s < pp - 1:
                    hidden = out.contiguous()
            if s < pp - 1:  # hand stage s's output to stage s+1
                shape = (tokens.shape[1], tokens.shape[0], chunk.config.hidden_size)
                buf = hidden if s == stage else torch.empty(shape, dtype=torch.float32)
                ranks = dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group())
                dist.broadcast(buf, src=ranks[s], group=ps.get_pipeline_model_parallel_group())
                if s + 1 == stage:
                    hidden = buf
    if stage != pp - 1:
        return None
    tp = ps.get_tensor_model_parallel_world_size()
    if tp > 1:
        parts = [torch.empty_like(out) for _ in range(tp)]
        dist.all_gather(parts, out.contiguous(), group=ps.get_tensor_model_parallel_group())
        out = torch.cat(parts, dim=-1)
    return out


def train_and_logits(runs: List[list], tokens: torch.Tensor) -> list:
    """For each argv in ``runs``: train with the real trainer, then the live model's logits.
    Returns, per run, the logits (on the last stage's rank 0 of TP; None elsewhere)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron_hpt.train import run
    from megatron_hpt.training import distributed

    torch.set_num_threads(1)
    out = []
    try:
        for argv in runs:
            result = run(argv)
            logits = _live_logits(result["model"], tokens)
            keep = logits is not None and ps.get_tensor_model_parallel_rank() == 0 and \
                ps.get_data_parallel_rank() == 0
            out.append((logits if keep else None, [m["lm loss"] for m in result["metrics"]]
                        if keep else None))
            dist.barrier()
            ps.destroy_model_parallel()  # the next run sets its own layout on the same process group
    finally:
        distributed.destroy()
    return out
