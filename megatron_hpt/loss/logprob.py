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

Memory and passes: tokens are processed in row blocks (on CPU about ``_BLOCK_ELEMENTS``
elements, so a block's intermediates stay in cache; on an accelerator half a chunk).
When all N tokens fit in one chunk (N ≤ ``chunk_size``) one ``[N, vocab/TP]`` workspace (fp32;
fp64 for fp64 logits) holding exp(z − max), or z − max when the entropy is requested, is saved
for the backward instead of the logits (which autograd may then free), and the backward turns it
into the gradient in place (without entropy that is a single multiply). Otherwise only the
logits are saved, and each block is recomputed in the backward and written straight into the
gradient: the extra memory is then at most two blocks (≤ one ``[chunk, vocab/TP]`` buffer).
In the kept case the workspace plus at most one block.
The logits are never modified in place. The entropy term enters the backward only when the
entropy output receives a gradient (a preset with an entropy bonus).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

DEFAULT_CHUNK_SIZE = 4096
_BLOCK_ELEMENTS = 1 << 18  # CPU row block: 1 MiB of fp32, stays in L2/L3


def _all_reduce(tensor: torch.Tensor, op, group) -> None:
    """All-reduce in place over ``group``; a no-op without tensor parallelism."""
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)


def _vocab_start(vocab_local: int, group) -> int:
    """First global vocabulary id held by this rank."""
    if group is None or dist.get_world_size(group) == 1:
        return 0
    return dist.get_rank(group) * vocab_local


def _block_rows(vocab_local: int, rows: int, device: torch.device) -> int:
    """Rows per block: cache-sized on CPU, half a chunk on an accelerator (few large kernels)."""
    if device.type != "cpu":
        return max(1, rows // 2)  # two blocks at most: together ≤ one [chunk, V/TP] buffer
    return max(1, min(rows, _BLOCK_ELEMENTS // vocab_local))


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

        keep = n <= chunk_size  # one chunk: keep the [N, V/TP] workspace for the backward
        step = _block_rows(vocab_local, min(chunk_size, n), dev)
        work = torch.empty(n, vocab_local, dtype=acc, device=dev) if keep else None
        n_tmp = (0 if keep else 1) + (1 if with_entropy else 0)
        tmp = torch.empty(n_tmp, step, vocab_local, dtype=acc, device=dev)  # [≤2, b, V/TP]
        local_max = torch.empty(n, dtype=acc, device=dev)  # [N]
        stats = torch.zeros(3, n, dtype=acc, device=dev)  # [3, N]
        stats[2] = logits.gather(1, local_target[:, None]).squeeze(1).to(acc).mul_(inv_t)
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            m = torch.amax(logits[lo:hi], dim=1).to(acc).mul_(inv_t)  # [b]
            local_max[lo:hi] = m
            w = work[lo:hi] if keep else tmp[0, : hi - lo]  # [b, V/TP]
            torch.add(-m[:, None], logits[lo:hi], alpha=inv_t, out=w)  # z − m
            if with_entropy:  # w keeps z − m
                e = tmp[-1, : hi - lo]
                torch.exp(w, out=e)
                torch.sum(e, dim=1, out=stats[0, lo:hi])
                torch.linalg.vecdot(e, w, out=stats[1, lo:hi])
            else:  # w becomes e^{z − m}
                w.exp_()
                torch.sum(w, dim=1, out=stats[0, lo:hi])
        del tmp

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
        ctx.inv_t, ctx.step, ctx.keep, ctx.with_entropy = inv_t, step, keep, with_entropy
        ctx.shape, ctx.dtype = logits.shape, logits.dtype
        ctx.set_materialize_grads(False)
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logprob, entropy  # fp32 (fp64 for fp64 logits): never rounded to bf16

    @staticmethod
    def backward(ctx, grad_logprob, grad_entropy):
        logits, saved, local_target, in_shard, local_max, offset, entropy = ctx.saved_tensors
        if ctx.keep and getattr(ctx, "consumed", False):
            raise RuntimeError("vocab_parallel_logprob_entropy reuses its workspace in the "
                               "backward: a second backward through the same call is not "
                               "supported (use chunk_size < tokens to recompute instead)")
        ctx.consumed = True
        n, vocab_local = ctx.shape
        inv_t, step = ctx.inv_t, ctx.step
        acc, dev = offset.dtype, offset.device
        use_entropy = grad_entropy is not None and ctx.with_entropy
        g_lp = (grad_logprob.to(acc) if grad_logprob is not None
                else torch.zeros(n, dtype=acc, device=dev))  # [N]
        # dL/dlogits = g_lp·1_y / T + p·(a + b·log p),  a = −(g_lp + g_H·H)/T,  b = −g_H/T
        coef_a = -g_lp * inv_t  # [N]
        coef_b = None
        if use_entropy:
            g_h = grad_entropy.to(acc)
            coef_a = coef_a - g_h * entropy * inv_t
            coef_b = -g_h * inv_t

        if ctx.keep and not ctx.with_entropy:  # saved holds e^{z − m_local}; p = e·exp(−offset)
            grad = saved.mul_((coef_a * torch.exp(-offset))[:, None])
        else:
            grad = saved if ctx.keep else torch.empty(ctx.shape, dtype=ctx.dtype, device=dev)
            n_tmp = (0 if ctx.keep else 1) + (0 if coef_b is None else 1)
            tmp = torch.empty(n_tmp, step, vocab_local, dtype=acc, device=dev)  # [≤2, b, V/TP]
            for lo in range(0, n, step):
                hi = min(lo + step, n)
                if ctx.keep and coef_b is not None:  # saved holds w = z − m_local
                    # p·(a + b·log p) = e^w·(a' + b'·w), a' = (a − b·off)·e^−off, b' = b·e^−off
                    w, p, e_off = saved[lo:hi], tmp[-1, : hi - lo], torch.exp(-offset[lo:hi])
                    a2 = (coef_a[lo:hi] - coef_b[lo:hi] * offset[lo:hi]) * e_off
                    torch.exp(w, out=p)
                    torch.addcmul(a2[:, None], w, (coef_b[lo:hi] * e_off)[:, None], out=w)
                    w.mul_(p)
                    continue
                if ctx.keep:  # saved holds z − m_local
                    logp = saved[lo:hi].sub_(offset[lo:hi, None])
                else:  # recompute log p = z − (m_local + offset) from the logits
                    logp = tmp[0, : hi - lo]
                    torch.add(-(local_max + offset)[lo:hi, None], logits[lo:hi], alpha=inv_t, out=logp)
                if coef_b is None:
                    logp.exp_()
                    torch.mul(logp, coef_a[lo:hi, None], out=grad[lo:hi])
                else:
                    p = tmp[-1, : hi - lo]
                    torch.exp(logp, out=p)
                    torch.addcmul(coef_a[lo:hi, None], logp, coef_b[lo:hi, None], out=logp)
                    torch.mul(logp, p, out=grad[lo:hi])
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
    (None = no tensor parallelism). chunk_size: up to this many tokens the fp32 workspace is
    kept for the backward (faster; like megatron's cross entropy, which keeps an fp32 softmax),
    beyond it every block is recomputed from the logits (memory between forward and backward:
    the logits only — what matters with bf16 logits or several micro-batches in flight). Returns
    ``(logprob [...], entropy [...] or None)`` in fp32 whatever the logits' dtype (fp64 for
    fp64 logits): bf16 log-probs would put 3-12% noise on importance ratios and entropies.
    The gradient w.r.t. the logits comes back in the logits' dtype. See the module docstring for the collectives and the memory bound.
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
