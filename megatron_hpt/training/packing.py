"""Rows -> micro-batches: fixed-size, token-budget (``--max-tokens-per-micro-batch``) or packed
into one THD stream per micro-batch (``--sequence-packing``).

A row's *length* is the tokens the loss needs: up to its last loss-mask position (a causal model's
logits there do not depend on later tokens, which are padding). With a token budget the rows of
one mini-batch are placed by first-fit decreasing (longest first, ties by row index, each row into
the first micro-batch with room): deterministic, so every TP / PP / CP rank of a data-parallel
replica, which holds the same rows, builds the same micro-batches; with PP > 1 the lengths are
also all-reduced (MAX) over the pipeline group first, so stages agree on number and shapes even
if a stage's copy of the rows differed. A micro-batch's cost is

    padded:  rows x (its longest row rounded up to ``multiple``)   <= budget
    packed:  Σ (each row rounded up to ``multiple``)                <= budget

``multiple`` is what the layout needs of a sequence length: TP with sequence parallelism splits
the sequence over TP ranks, context parallelism into 2·CP chunks (``pad_multiple``).

Names other frameworks use for the budget: slime ``--max-tokens-per-gpu`` (with
``--use-dynamic-batch-size``), verl ``ppo_max_token_len_per_gpu`` (with ``use_dynamic_bsz``):
tokens of one micro-batch on one GPU, as here. Prompt groups are never split over DP ranks
(the RL task rolls out each replica's own prompts); the packer only regroups a replica's rows.

Packed (THD) micro-batches carry ``tokens``, ``labels`` and ``position_ids`` as one stream
[1, T] (positions restart at 0 in every row) and ``cu_seqlens`` [rows + 1] (row boundaries);
every per-row / per-token field the loss reads (``response_mask``, ``old_logprobs``, ...) stays
in the padded [rows, longest] layout, and the loss head unpacks its per-token log-probs into it
(``to_rows``). Rows are ``loss/batch.py`` ``Batch`` objects.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.distributed as dist

from megatron_hpt.loss.batch import Batch

#: stream fields of a packed micro-batch (the model's inputs and the labels)
STREAM_KEYS = ("tokens", "labels", "position_ids")


def row_lengths(loss_mask: torch.Tensor) -> List[int]:
    """Tokens each row needs: through its last loss-mask position (at least 1). loss_mask [N, S]."""
    valid = loss_mask > 0
    pos = torch.arange(1, loss_mask.shape[1] + 1, device=loss_mask.device).expand_as(valid)
    return [max(int(v), 1) for v in (pos * valid).max(dim=1).values.cpu()]


def pad_multiple(tensor_parallel: int = 1, sequence_parallel: bool = False,
                 context_parallel: int = 1) -> int:
    """The multiple a micro-batch's sequence length must be: TP with sequence parallelism splits
    it over TP ranks, context parallelism into 2·CP load-balanced chunks."""
    a = tensor_parallel if sequence_parallel else 1
    b = 2 * context_parallel if context_parallel > 1 else 1
    return a * b // math.gcd(a, b)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def plan_token_budget(lengths: Sequence[int], max_tokens: int, multiple: int = 1,
                      packed: bool = False) -> List[List[int]]:
    """First-fit decreasing: row indices of each micro-batch (ascending inside a micro-batch;
    micro-batches in the order they were opened, the longest row's first)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: List[List[int]] = []
    cost: List[int] = []  # padded: the rounded longest row (the first placed); packed: Σ rounded
    for i in order:
        need = round_up(lengths[i], multiple)
        if need > max_tokens:
            raise ValueError(f"--max-tokens-per-micro-batch {max_tokens}: row {i} needs {need} "
                             f"tokens (rounded to a multiple of {multiple}); raise the budget to "
                             "at least --seq-length")
        for b, rows in enumerate(bins):
            fits = cost[b] + need <= max_tokens if packed else (len(rows) + 1) * cost[b] <= max_tokens
            if fits:
                rows.append(i)
                if packed:
                    cost[b] += need
                break
        else:
            bins.append([i])
            cost.append(need)
    return [sorted(rows) for rows in bins]


def take(rows: Batch, index: Sequence[int], length: int) -> Batch:
    """The rows ``index`` of ``rows``; per-token fields ([N, S]) cut to ``length``."""
    picked = rows.select(list(index))
    seq = rows.tokens.shape[1]
    return picked.replace(**{k: v[:, :length].contiguous() for k, v in picked.tensors().items()
                             if v.dim() >= 2 and v.shape[1] == seq})


def pack_thd(mb: Batch, multiple: int = 1) -> Batch:
    """One micro-batch (padded layout) -> the THD stream: each row's first round_up(length,
    multiple) tokens concatenated; positions restart at 0 per row; ``cu_seqlens`` int32."""
    lengths = [min(round_up(n, multiple), mb.tokens.shape[1]) for n in row_lengths(mb.response_mask)]
    out = {k: torch.cat([getattr(mb, k)[i, :n] for i, n in enumerate(lengths)])[None]
           for k in STREAM_KEYS}
    out["position_ids"] = torch.cat([torch.arange(n, device=mb.device) for n in lengths])[None]
    out["cu_seqlens"] = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(
        torch.int32).to(mb.device)
    return mb.replace(**out)


def to_rows(batch: Batch, values: torch.Tensor) -> torch.Tensor:
    """Per-token values of the model's output stream in the padded [rows, S] layout of
    ``batch.response_mask``: unchanged for a padded micro-batch, unpacked (zeros after each row's
    end) for a packed one. Differentiable."""
    if batch.cu_seqlens is None:
        return values
    cu = [int(c) for c in batch.cu_seqlens]
    width = batch.response_mask.shape[1]
    flat = values.reshape(-1)
    rows = [torch.nn.functional.pad(flat[a:b], (0, width - (b - a))) for a, b in zip(cu, cu[1:])]
    return torch.stack(rows)


def packed_seq_params(batch: Batch):
    """megatron-core's PackedSeqParams (THD) of a packed micro-batch, None for a padded one."""
    if batch.cu_seqlens is None:
        return None
    from megatron.core.packed_seq_params import PackedSeqParams
    cu = batch.cu_seqlens.to(batch.device)
    longest = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                           max_seqlen_q=longest, max_seqlen_kv=longest)


def _agree_over_pipeline(lengths: List[int]) -> List[int]:
    """With PP > 1: the element-wise MAX of the lengths over the pipeline group."""
    from megatron.core import parallel_state
    if not dist.is_initialized() or parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return lengths
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    t = torch.tensor(lengths, dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=parallel_state.get_pipeline_model_parallel_group())
    return [int(v) for v in t.cpu()]


def plan(rows: Batch, micro_batch_size: int,
         max_tokens: Optional[int] = None, multiple: int = 1, packed: bool = False
         ) -> List[List[int]]:
    """Row indices of each micro-batch: consecutive ``micro_batch_size`` rows without a budget,
    first-fit decreasing under it."""
    n = rows.num_rows
    if not max_tokens:
        return [list(range(i, min(i + micro_batch_size, n))) for i in range(0, n, micro_batch_size)]
    lengths = _agree_over_pipeline(row_lengths(rows.response_mask))
    return plan_token_budget(lengths, max_tokens, multiple, packed)


def build(rows: Batch, index: List[List[int]], budgeted: bool,
          multiple: int = 1, packed: bool = False) -> List[Batch]:
    """The micro-batches of a plan: full-length rows without a budget (as before), else each cut
    to its longest row rounded to ``multiple`` (never beyond the rows' length), packed if asked."""
    seq = rows.tokens.shape[1]
    lengths = row_lengths(rows.response_mask) if budgeted else None
    out = []
    for idx in index:
        width = min(round_up(max(lengths[i] for i in idx), multiple), seq) if budgeted else seq
        mb = take(rows, idx, width)
        out.append(pack_thd(mb, multiple) if packed else mb)
    return out


def micro_batches(rows: Batch, cfg, index_out: Optional[list] = None) -> List[Batch]:
    """This replica's rows -> micro-batches by the run's settings (``cfg``: TrainingConfig).
    ``index_out`` (a list) receives each micro-batch's row indices."""
    par = cfg.parallel
    multiple = pad_multiple(par.tensor_model_parallel_size, par.sequence_parallel,
                            par.context_parallel_size)
    budget = getattr(cfg, "max_tokens_per_micro_batch", None)
    packed = bool(getattr(cfg, "sequence_packing", False))
    index = plan(rows, cfg.micro_batch_size, budget, multiple, packed)
    if index_out is not None:
        index_out.extend(index)
    return build(rows, index, bool(budget), multiple, packed)


def unpack(values: Sequence[torch.Tensor], index: Sequence[Sequence[int]], n_rows: int,
           seq_length: int) -> torch.Tensor:
    """Per-micro-batch [rows_i, S_i] values back in row order, [n_rows, seq_length], zero-padded."""
    first = values[0]
    out = torch.zeros((n_rows, seq_length), dtype=first.dtype, device=first.device)
    for v, idx in zip(values, index):
        out[torch.tensor(list(idx), dtype=torch.long, device=first.device), :v.shape[1]] = v
    return out


def schedule_shape(model, micro_batches: List[Batch], seq_length: int):
    """(seq_length, micro_batch_size) for megatron's schedule. Micro-batches of different shapes:
    the largest, and the model config's ``variable_seq_lengths`` set so the pipeline schedule
    exchanges each activation's shape between stages (megatron's own mechanism)."""
    shapes = {tuple(mb.tokens.shape) for mb in micro_batches}
    if len(shapes) == 1:
        b, s = next(iter(shapes))
        return s, b
    from megatron.core.utils import get_model_config
    get_model_config(model[0]).variable_seq_lengths = True
    return max(s for _, s in shapes), max(b for b, _ in shapes)
