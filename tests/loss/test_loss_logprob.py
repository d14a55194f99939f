"""Fused vocab-parallel log-prob / entropy against log_softmax references, TP=1 and TP=2 (gloo)."""
import pytest
import torch
import torch.distributed as dist

from loss_gloo import run_gloo
from megatron_hpt.loss import vocab_parallel_logprob_entropy

TEMPERATURE = 0.7


def reference(logits, target, temperature):
    logp_all = torch.log_softmax(logits / temperature, dim=-1)
    logp = logp_all.gather(-1, target[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def make(seed, shape=(3, 5), vocab=37, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(*shape, vocab, generator=g, dtype=dtype)
    target = torch.randint(0, vocab, shape, generator=g)
    w_lp = torch.randn(*shape, generator=g, dtype=dtype)
    w_h = torch.randn(*shape, generator=g, dtype=dtype)
    return logits, target, w_lp, w_h


def grads(fn, logits, target, w_lp, w_h, use_entropy):
    x = logits.clone().requires_grad_()
    logp, entropy = fn(x, target)
    obj = (logp * w_lp).sum() + ((entropy * w_h).sum() if use_entropy else 0.0)
    g, = torch.autograd.grad(obj, x)
    return logp.detach(), None if entropy is None else entropy.detach(), g


@pytest.mark.parametrize("chunk_size", [1, 4, 15, 1024])
@pytest.mark.parametrize("use_entropy", [True, False])
def test_tp1_matches_log_softmax(chunk_size, use_entropy):
    logits, target, w_lp, w_h = make(0)
    fused = lambda x, y: vocab_parallel_logprob_entropy(x, y, TEMPERATURE, None, chunk_size,
                                                        with_entropy=use_entropy)
    ref = lambda x, y: reference(x, y, TEMPERATURE)
    lp, h, g = grads(fused, logits, target, w_lp, w_h, use_entropy)
    lp_r, h_r, g_r = grads(ref, logits, target, w_lp, w_h, use_entropy)
    assert torch.allclose(lp, lp_r, rtol=1e-10, atol=1e-12)
    assert torch.allclose(g, g_r, rtol=1e-10, atol=1e-12)
    if use_entropy:
        assert torch.allclose(h, h_r, rtol=1e-10, atol=1e-12)
    else:
        assert h is None


def test_entropy_gradient_alone_and_chunking_is_exact():
    logits, target, _, w_h = make(1, shape=(40,), vocab=29)
    x = logits.clone().requires_grad_()
    _, h = vocab_parallel_logprob_entropy(x, target, TEMPERATURE, chunk_size=7)
    g, = torch.autograd.grad((h * w_h).sum(), x)
    _, h_r = reference(x, target, TEMPERATURE)
    g_r, = torch.autograd.grad((h_r * w_h).sum(), x)
    assert torch.allclose(g, g_r, rtol=1e-10, atol=1e-12)
    outs = [vocab_parallel_logprob_entropy(logits, target, TEMPERATURE, chunk_size=c) for c in (3, 40)]
    assert torch.equal(outs[0][0], outs[1][0]) and torch.allclose(outs[0][1], outs[1][1], rtol=1e-14)


@pytest.mark.parametrize("chunk_size", [5, 1024])
def test_logits_not_modified_in_place(chunk_size):
    logits, target, w_lp, w_h = make(2, dtype=torch.float32)
    x = logits.clone().requires_grad_()
    before = x.detach().clone()
    logp, h = vocab_parallel_logprob_entropy(x, target, TEMPERATURE, chunk_size=chunk_size)
    ((logp * w_lp.float()).sum() + (h * w_h.float()).sum()).backward()
    assert torch.equal(x.detach(), before)
    lp_r, h_r = reference(before.double(), target, TEMPERATURE)
    assert torch.allclose(logp.double(), lp_r, atol=1e-5) and torch.allclose(h.double(), h_r, atol=1e-5)


def test_bfloat16_logits_run_in_fp32():
    logits, target, w_lp, _ = make(3, dtype=torch.float32)
    x = logits.to(torch.bfloat16).requires_grad_()
    logp, _ = vocab_parallel_logprob_entropy(x, target, TEMPERATURE, chunk_size=4)
    (logp.float() * w_lp.float()).sum().backward()
    lp_r, _ = reference(x.detach().double(), target, TEMPERATURE)
    # log-probs stay fp32 (exact to fp32 round-off of the bf16 logits' values); the gradient
    # w.r.t. the logits has the logits' dtype
    assert logp.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    assert torch.allclose(logp.double(), lp_r, rtol=1e-5, atol=1e-5)


def _tp2_body(rank):
    calls = []
    real = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        calls.append(tuple(tensor.shape))
        return real(tensor, *args, **kwargs)

    dist.all_reduce = counting  # count the collectives of the fused function
    logits, target, w_lp, w_h = make(4, shape=(6, 3), vocab=40)
    half = logits.shape[-1] // 2
    cols = slice(rank * half, (rank + 1) * half)
    for chunk_size in (4, 1024):
        for use_entropy in (True, False):
            calls.clear()
            shard = logits[..., cols].clone().requires_grad_()
            logp, h = vocab_parallel_logprob_entropy(shard, target, TEMPERATURE, dist.group.WORLD,
                                                     chunk_size, with_entropy=use_entropy)
            forward_calls = len(calls)
            obj = (logp * w_lp).sum() + ((h * w_h).sum() if use_entropy else 0.0)
            g, = torch.autograd.grad(obj, shard)
            full = logits.clone().requires_grad_()
            lp_r, h_r = reference(full, target, TEMPERATURE)
            obj_r = (lp_r * w_lp).sum() + ((h_r * w_h).sum() if use_entropy else 0.0)
            g_r, = torch.autograd.grad(obj_r, full)
            assert torch.allclose(logp, lp_r, rtol=1e-10, atol=1e-12)
            if use_entropy:
                assert torch.allclose(h, h_r, rtol=1e-10, atol=1e-12)
            assert torch.allclose(g, g_r[..., cols], rtol=1e-10, atol=1e-12)
            assert forward_calls == 2, calls  # MAX of [N], SUM of [3, N]
            assert len(calls) == 2, calls  # backward: no collective
    dist.all_reduce = real


def test_tp2_gloo_matches_full_vocab(tmp_path):
    assert run_gloo(_tp2_body, tmp_path)
