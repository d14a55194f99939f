"""One optimizer step on megatron-core's machinery.

``train_step`` runs ``get_forward_backward_func()`` (no pipelining, or 1F1B when PP > 1) over the
micro-batches of this DP rank, then the megatron optimizer (grad-norm, clipping, update) and the LR
schedule. The loss is pluggable: a ``LossFn`` maps one micro-batch's vocab-parallel logits to
``(loss, num_tokens, metrics)`` where ``loss`` is already divided by the step's global normalizers,
so summing over micro-batches and DP ranks gives the global loss (megatron's own divisions are
cancelled: ``calculate_per_token_loss=True`` in the model config and
``finalize_grads_without_token_scaling``).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Dict, List, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_hpt import platform
from megatron_hpt.loss.batch import Batch, cp_unshard
from megatron_hpt.training.grad_skip import over_grad_norm_limit
from megatron_hpt.training.packing import packed_seq_params, schedule_shape, to_rows
from megatron_hpt.training.nonfinite import guarded_optimizer_step

#: (logits [b, s, V/TP], micro_batch) -> (loss scalar, local token count, {name: tensor})
LossFn = Callable[[torch.Tensor, Batch], Tuple[torch.Tensor, torch.Tensor, Dict]]


def this_cp_rank_share(batch: Batch) -> Batch:
    """This context-parallel rank's tokens of ``batch`` (load-balanced layout, whole-row
    lengths kept; loss/batch.py); the batch itself without CP."""
    cp_size = parallel_state.get_context_parallel_world_size()
    if cp_size == 1:
        return batch
    return batch.cp_shard(parallel_state.get_context_parallel_rank(), cp_size)


def _forward_step(loss_fn: LossFn, data_iterator, model):
    """megatron forward_step_func: run one micro-batch (already on the device) through this
    stage; with CP, this rank's token shard of it."""
    batch = this_cp_rank_share(next(data_iterator))
    with platform.model_compute():
        logits = model(batch.tokens, batch.position_ids, None,
                       packed_seq_params=packed_seq_params(batch))
    # Non-last stages return the hidden states for the next stage; the loss is only applied last.
    return logits, partial(_loss_func, loss_fn, batch)


def _loss_func(loss_fn: LossFn, batch, logits):
    loss, num_tokens, metrics = loss_fn(logits, batch)
    # megatron's schedule may scale the returned tensor in place: report detached clones.
    reported = {k: v.detach().clone().reshape(1).float() for k, v in metrics.items()}
    return loss, num_tokens, reported


def reduce_metrics(per_microbatch: List[Dict[str, torch.Tensor]],
                   additive=("lm loss",)) -> Dict[str, float]:
    """Global value of each metric over micro-batches and DP ranks: ``additive`` metrics are
    pre-divided by global normalizers and summed; ``*_min``/``*_max`` take the min/max; the rest
    (fractions, means) are averaged over the micro-batches that report them.

    A metric may be absent from some micro-batches or ranks (a ratio statistic where a rank holds
    no on-policy token): the key sets are unioned over the DP x CP group first, so every rank
    issues the same collectives. Non-last pipeline stages return {}."""
    if not per_microbatch:
        return {}
    device = next(v for m in per_microbatch for v in m.values()).device if any(per_microbatch) \
        else _device()
    group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    keys = set().union(*per_microbatch)
    if dist.get_world_size(group) > 1:
        gathered = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, sorted(keys), group=group)
        keys = set().union(*map(set, gathered))
    keys = sorted(keys)
    out = {}
    for op, selected in ((dist.ReduceOp.MIN, [k for k in keys if k.endswith("_min")]),
                         (dist.ReduceOp.MAX, [k for k in keys if k.endswith("_max")]),
                         (dist.ReduceOp.SUM, [k for k in keys if not k.endswith(("_min", "_max"))])):
        if not selected:
            continue
        vals = []
        for k in selected:
            present = [m[k].reshape(()).double() for m in per_microbatch if k in m]
            if op == dist.ReduceOp.MIN:
                vals.append(torch.stack(present).min() if present else torch.tensor(float("inf"), device=device))
            elif op == dist.ReduceOp.MAX:
                vals.append(torch.stack(present).max() if present else torch.tensor(float("-inf"), device=device))
            else:  # sum, plus the count for averaging the non-additive ones
                total = torch.stack(present).sum() if present else torch.tensor(0.0, device=device)
                vals += [total, torch.tensor(float(len(present)), device=device)]
        local = torch.stack([v.double() for v in vals])
        dist.all_reduce(local, op=op, group=group)
        local = local.tolist()
        if op != dist.ReduceOp.SUM:
            out.update({k: float(v) for k, v in zip(selected, local)})
        else:
            for i, k in enumerate(selected):
                total, count = float(local[2 * i]), float(local[2 * i + 1])
                out[k] = total if k in additive else total / max(count, 1.0)
    return out


def _device():
    from megatron_hpt.platform import device
    return device()


def _iterators(micro_batches, model):
    """One iterator, or one per model chunk (interleaved 1F1B runs every chunk over every
    micro-batch: each chunk reads the positions, the first the tokens, the last the labels)."""
    return iter(micro_batches) if len(model) == 1 else [iter(micro_batches) for _ in model]


def forward_backward(model, micro_batches: List[Batch], loss_fn: LossFn,
                     seq_length: int, forward_only: bool = False,
                     additive=("lm loss",)) -> Dict[str, float]:
    """Forward (and backward) over this rank's micro-batches; returns globally reduced metrics
    (on the last pipeline stage; {} elsewhere)."""
    seq_length, micro_batch_size = schedule_shape(model, micro_batches, seq_length)
    outputs = get_forward_backward_func()(
        forward_step_func=partial(_forward_step, loss_fn),
        data_iterator=_iterators(micro_batches, model),
        model=model,
        num_microbatches=len(micro_batches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    return reduce_metrics(outputs, additive)


def _logprob_forward_step(temperature: float, data_iterator, model):
    """forward_step_func of ``forward_logprobs``: per-token log-probs of the labels and entropy."""
    batch = this_cp_rank_share(next(data_iterator))
    with platform.model_compute():
        logits = model(batch.tokens, batch.position_ids, None,
                       packed_seq_params=packed_seq_params(batch))

    def collect(output, non_loss_data=True):
        from megatron_hpt.loss import vocab_parallel_logprob_entropy
        logprobs, entropy = vocab_parallel_logprob_entropy(
            output, batch.labels, temperature=temperature,
            group=parallel_state.get_tensor_model_parallel_group(), with_entropy=True)
        return (to_rows(batch, _cp_gather(logprobs.detach().float())),
                to_rows(batch, _cp_gather(entropy.detach().float())))
    return logits, collect


def _cp_gather(shard: torch.Tensor) -> torch.Tensor:
    """Whole rows from every CP rank's token shard (all_gather over the CP group); the shard
    itself without CP."""
    cp_size = parallel_state.get_context_parallel_world_size()
    if cp_size == 1:
        return shard
    parts = [torch.empty_like(shard) for _ in range(cp_size)]
    dist.all_gather(parts, shard.contiguous(), group=parallel_state.get_context_parallel_group())
    return cp_unshard(parts)


def forward_logprobs(model, micro_batches: List[Batch], seq_length: int,
                     temperature: float = 1.0) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Per-token (log-prob of ``labels``, entropy) under the current weights, two [b, s] tensors
    per micro-batch, through megatron's schedule in forward-only mode (any TP/PP). Returned on
    the last pipeline stage (the only stage that computes the loss); [] elsewhere.

    What moves: the pipeline's activations (as in training) and the TP all-reduces of the
    vocab-parallel log-prob; no gradient, no optimizer state."""
    was_training = [chunk.training for chunk in model]
    for chunk in model:
        chunk.eval()
    seq_length, micro_batch_size = schedule_shape(model, micro_batches, seq_length)
    try:
        with torch.no_grad():
            out = get_forward_backward_func()(
                forward_step_func=partial(_logprob_forward_step, temperature),
                data_iterator=_iterators(micro_batches, model), model=model,
                num_microbatches=len(micro_batches), seq_length=seq_length,
                micro_batch_size=micro_batch_size,
                forward_only=True, collect_non_loss_data=True)
    finally:
        for chunk, flag in zip(model, was_training):
            chunk.train(flag)
    return list(out) if parallel_state.is_pipeline_last_stage(ignore_virtual=True) else []


def train_step(model, optimizer, scheduler, micro_batches, loss_fn: LossFn, seq_length: int,
               skip_grad_norm_above=None) -> Dict[str, float]:
    """One optimizer step: zero grads, forward/backward all micro-batches, clip, update, LR step.
    Returns metrics plus ``grad_norm``, ``lr`` and ``skipped`` (1 if the update was skipped: the
    loss or the gradient norm was not finite, see ``nonfinite.py``, or the norm was above
    ``skip_grad_norm_above``, then also ``skipped grad norm`` = 1, see ``grad_skip.py``)."""
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    metrics = forward_backward(model, micro_batches, loss_fn, seq_length,
                               additive=getattr(loss_fn, "additive_metrics", ("lm loss",)))
    # skipped (no update, no schedule step) when the loss or grad norm is not finite on any rank
    # or the grad norm is above --skip-grad-norm-above
    update_successful, grad_norm = guarded_optimizer_step(optimizer, metrics.get("lm loss"),
                                                          skip_grad_norm_above)
    for chunk in model:
        if getattr(chunk, "use_forward_hook", False):
            # --overlap-param-gather defers the all-gather of the updated params to the next
            # forward's pre-hooks; checkpoints and the rollout weight stream read the params
            # before that forward, so gather now (megatron's force_sync).
            chunk.start_param_sync(force_sync=True)
    if update_successful:
        scheduler.step(increment=1)
    metrics.update(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                   lr=optimizer.param_groups[0]["lr"], skipped=0.0 if update_successful else 1.0)
    if skip_grad_norm_above is not None:
        metrics["skipped grad norm"] = float(over_grad_norm_limit(grad_norm, skip_grad_norm_above))
    metrics["micro batches"] = float(len(micro_batches))  # this rank's (token budget: varies)
    return metrics
