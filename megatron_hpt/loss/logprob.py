"""Vocab-parallel log-probability and entropy of the sampled tokens.

Sharding: ``logits`` is the ``[..., vocab/TP]`` output of megatron-core's
``ColumnParallelLinear`` output layer; rank ``r`` of the tensor-parallel ``group`` holds the
vocabulary columns ``[r * V_local, (r + 1) * V_local)``. ``target`` holds global token ids.
The full vocabulary is never gathered.

What moves (SPEC §1: z = logits / T, log p_y = z_y − logsumexp(z), H = logsumexp(z) − E_p[z]):

- forward: 2 all-reduces over ``group`` for the whole input (not per chunk):
  MAX of the per-token max ``[N]``, then SUM of one stacked ``[3, N]`` tensor
  (Σ exp(z − max), Σ exp(z − max)·(z − max), the target logit z_y).
- backward: none. d log p_y / dz_j = 1[j = y] − p_j and
  dH / dz_j = p_j (E_p[z] − z_j) = −p_j (log p_j + H) are local; both are divided by T.

Memory: one ``[chunk_size, vocab/TP]`` workspace (fp32; fp64 for fp64 logits) plus one
cache-sized block of ``_BLOCK_ELEMENTS``, besides the ``[..., vocab/TP]`` gradient that autograd
needs anyway. When all N tokens fit in one chunk the workspace (exp(z − max), or z − max when
the entropy is requested) is saved for the backward instead of the logits (which autograd may
then free), and the backward writes the gradient into it (without entropy it needs no second
exp). Otherwise the logits are saved and each chunk is recomputed in the backward.
The logits are never modified in place. The entropy term enters the backward only when the
entropy output receives a gradient (a preset with an entropy bonus).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

DEFAULT_CHUNK_SIZE = 1024
_BLOCK_ELEMENTS = 1 << 18  # row block kept in cache for the two-operand steps


def _all_reduce(tensor: torch.Tensor, op, group) -> None:
    """All-reduce in place over ``group``; a no-op without tensor parallelism."""
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)


def _vocab_start(vocab_local: int, group) -> int:
    """First global vocabulary id held by this rank."""
    if group is None or dist.get_world_size(group) == 1:
        return 0
    return dist.get_rank(group) * vocab_local


def _block_rows(vocab_local: int) -> int:
    return max(1, _BLOCK_ELEMENTS // vocab_local)


def _local_stats(w, sum_exp, sum_exp_z, tmp, with_entropy):
    """w: [c, V/TP] holding z − max. Fills Σ e^{z−max} and, with entropy, Σ e^{z−max}(z−max).

    Without entropy w is left holding e^{z−max}; with entropy it keeps z − max.
    """
    if not with_entropy:
        w.exp_()
        torch.sum(w, dim=1, out=sum_exp)
        return
    step = tmp.shape[0]
    for lo in range(0, w.shape[0], step):
        wb = w[lo:lo + step]  # [b, V/TP]
        e = tmp[: wb.shape[0]]
        torch.exp(wb, out=e)
        torch.sum(e, dim=1, out=sum_exp[lo:lo + step])
        torch.linalg.vecdot(e, wb, out=sum_exp_z[lo:lo + step])


def _grad_from_logp(logp, coef_a, coef_b, tmp, out):
    """out = p·(a + b·log p) with p = exp(log p); logp: [c, V/TP] (overwritten), a, b: [c]."""
    if coef_b is None:
        logp.exp_()
        torch.mul(logp, coef_a[:, None], out=out)
        return
    step = tmp.shape[0]
    for lo in range(0, logp.shape[0], step):
        lb = logp[lo:lo + step]
        p = tmp[: lb.shape[0]]
        torch.exp(lb, out=p)
        torch.addcmul(coef_a[lo:lo + step, None], lb, coef_b[lo:lo + step, None], out=lb)
        torch.mul(lb, p, out=out[lo:lo + step])


class _VocabParallelLogProbEntropy(torch.autograd.Function):
    """[N, V/TP] logits, [N] target → ([N] log p_y, [N] entropy or empty)."""

    @staticmethod
    def forward(ctx, logits, target, temperature, group, chunk_size, with_entropy):
        n, vocab_local = logits.shape
        inv_t = 1.0 / temperature
        acc = torch.promote_types(logits.dtype, torch.float32)
        dev = logits.device
        start = _vocab_start(vocab_local, group)
        local_target = target - start  # [N]
        in_shard = (local_target >= 0) & (local_target < vocab_local)  # [N]
        local_target = torch.where(in_shard, local_target, torch.zeros_like(local_target))

        rows = min(chunk_size, n)
        keep = rows == n  # one chunk: keep the workspace for the backward
        work = torch.empty(rows, vocab_local, dtype=acc, device=dev)  # [c, V/TP]
        tmp = torch.empty(min(rows, _block_rows(vocab_local)), vocab_local, dtype=acc, device=dev)
        local_max = torch.amax(logits, dim=1).to(acc).mul_(inv_t)  # [N]
        stats = torch.zeros(3, n, dtype=acc, device=dev)  # [3, N]
        stats[2] = logits.gather(1, local_target[:, None]).squeeze(1).to(acc).mul_(inv_t)
        for lo in range(0, n, rows):
            hi = min(lo + rows, n)
            w = work[: hi - lo]
            torch.add(-local_max[lo:hi, None], logits[lo:hi], alpha=inv_t, out=w)  # z − max
            _local_stats(w, stats[0, lo:hi], stats[1, lo:hi], tmp, with_entropy)
        del tmp
        if not keep:
            del work

        global_max = local_max.clone()
        _all_reduce(global_max, dist.ReduceOp.MAX, group)
        shift = local_max - global_max  # [N], ≤ 0
        scale = torch.exp(shift)
        stats[1] = scale * (stats[1] + shift * stats[0])  # Σ e^{z−M}(z−M) on this shard
        stats[0] = stats[0] * scale  # Σ e^{z−M} on this shard
        stats[2] = torch.where(in_shard, stats[2] - global_max, torch.zeros_like(stats[2]))
        _all_reduce(stats, dist.ReduceOp.SUM, group)

        log_sum = torch.log(stats[0])  # [N]
        logprob = stats[2] - log_sum  # [N]
        entropy = log_sum - stats[1] / stats[0] if with_entropy else logprob.new_empty(0)
        # log p = (z − m_local) − offset
        offset = global_max - local_max + log_sum  # [N]
        # one chunk: keep the workspace, not the logits (they may be freed after the forward)
        saved = (logits.new_empty(0), work) if keep else (logits, logits.new_empty(0))
        ctx.save_for_backward(*saved, local_target, in_shard, local_max, offset, entropy)
        ctx.inv_t, ctx.rows, ctx.keep, ctx.with_entropy = inv_t, rows, keep, with_entropy
        ctx.shape, ctx.dtype = logits.shape, logits.dtype
        ctx.set_materialize_grads(False)
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logprob.to(logits.dtype), entropy.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_logprob, grad_entropy):
        logits, saved, local_target, in_shard, local_max, offset, entropy = ctx.saved_tensors
        n, vocab_local = ctx.shape
        inv_t, rows = ctx.inv_t, ctx.rows
        if ctx.keep and getattr(ctx, "consumed", False):
            raise RuntimeError("vocab_parallel_logprob_entropy reuses its workspace in the "
                               "backward: a second backward through the same call is not "
                               "supported (use chunk_size < tokens to recompute instead)")
        ctx.consumed = True
        acc = offset.dtype
        use_entropy = grad_entropy is not None and ctx.with_entropy
        g_lp = (grad_logprob.to(acc) if grad_logprob is not None
                else torch.zeros(n, dtype=acc, device=offset.device))  # [N]
        # dL/dlogits = [g_lp·1_y − p·(g_lp + g_H·H + g_H·log p)] / T
        coef_a = -g_lp * inv_t  # [N]
        coef_b = None
        if use_entropy:
            g_h = grad_entropy.to(acc)
            coef_a = coef_a - g_h * entropy * inv_t
            coef_b = -g_h * inv_t
        tmp = torch.empty(min(rows, _block_rows(vocab_local)), vocab_local,
                          dtype=acc, device=offset.device) if use_entropy else None

        if ctx.keep and not ctx.with_entropy:  # saved holds e^{z − m_local}
            grad = saved.mul_((coef_a * torch.exp(-offset))[:, None])
        elif ctx.keep:  # saved holds z − m_local
            saved.sub_(offset[:, None])
            _grad_from_logp(saved, coef_a, coef_b, tmp, saved)
            grad = saved
        else:
            grad = torch.empty_like(logits)  # [N, V/TP]
            work = torch.empty(rows, vocab_local, dtype=acc, device=logits.device)
            shift = local_max + offset  # log p = z − shift
            for lo in range(0, n, rows):
                hi = min(lo + rows, n)
                w = work[: hi - lo]
                torch.add(-shift[lo:hi, None], logits[lo:hi], alpha=inv_t, out=w)
                _grad_from_logp(w, coef_a[lo:hi], None if coef_b is None else coef_b[lo:hi],
                                tmp, grad[lo:hi])
        rows_in = in_shard.nonzero().squeeze(1)  # [n_in]
        grad[rows_in, local_target[rows_in]] += (g_lp[rows_in] * inv_t).to(grad.dtype)
        return grad.to(ctx.dtype), None, None, None, None, None


def vocab_parallel_logprob_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 1.0,
    group=None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of ``target`` and entropy of softmax(logits / temperature).

    logits: ``[..., vocab/TP]`` (this rank's vocabulary shard, any float dtype, not modified);
    target: ``[...]`` global token ids in [0, vocab). group: the tensor-parallel process group
    (None = no tensor parallelism). chunk_size: tokens per workspace chunk. Returns
    ``(logprob [...], entropy [...] or None)`` in the logits' dtype (statistics accumulate in
    fp32). See the module docstring for the collectives and the memory bound.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} "
                         "must agree on every dimension but the last")
    lead = target.shape
    logits_2d = logits.reshape(-1, logits.shape[-1])  # [N, V/TP]
    target_1d = target.reshape(-1).long()  # [N]
    logprob, entropy = _VocabParallelLogProbEntropy.apply(
        logits_2d, target_1d, float(temperature), group, int(chunk_size), bool(with_entropy))
    return logprob.view(lead), (entropy.view(lead) if with_entropy else None)
