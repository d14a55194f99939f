"""Loss numerics are fp32 whatever the logits' dtype (issue: bf16 log-probs put 3-12% noise on
ratios and entropies). For every preset, bf16 logits -> log-probs, entropies, loss: fp32, and
equal to the result from the same values held in fp32 to fp32 round-off; the gradient w.r.t.
the logits is the fp32 one rounded to bf16."""
import pytest
import torch

import megatron_hpt.loss as L
from batch_cases import T, make_case

V = 33


def _loss_from_logits(cfg, batch, logits):
    logprobs, entropy = L.vocab_parallel_logprob_entropy(logits, batch.labels, chunk_size=64)
    assert logprobs.dtype == torch.float32 and entropy.dtype == torch.float32
    logprobs.retain_grad()
    extras = {"entropy": entropy} if cfg.entropy_coef > 0 else {"old_entropy": entropy.detach()}
    loss, metrics = L.policy_loss(logprobs, batch=batch, cfg=cfg, step=7, **extras)
    loss.backward()
    return loss, logprobs.grad, metrics


@pytest.mark.parametrize("name", L.preset_names())
def test_loss_from_bf16_logits_is_fp32_and_equals_fp32_logits(name):
    cfg, batch, _, _ = make_case(name)
    batch = batch.replace(**{k: v.float() for k, v in batch.tensors().items()
                             if v.is_floating_point()})
    g = torch.Generator().manual_seed(1)
    values = (2.0 * torch.randn(batch.num_rows, T, V, generator=g)).to(torch.bfloat16)
    x16 = values.clone().requires_grad_()
    x32 = values.float().requires_grad_()  # the very same numbers, held in fp32
    loss16, glp16, m16 = _loss_from_logits(cfg, batch, x16)
    loss32, glp32, _ = _loss_from_logits(cfg, batch, x32)
    assert loss16.dtype == torch.float32 and glp16.dtype == torch.float32
    assert all(v.dtype in (torch.float32, torch.float64) for v in m16.values())
    assert torch.allclose(loss16, loss32, rtol=1e-6, atol=1e-7), (name, float(loss16 - loss32))
    assert torch.allclose(glp16, glp32, rtol=1e-6, atol=1e-8)
    assert x16.grad.dtype == torch.bfloat16
    # the fp32 gradient rounded to bf16: within one bf16 ulp (2^-7 relative; the target
    # entry is rounded twice by the kernel's bf16 gradient buffer: softmax part, then + 1_y)
    assert torch.allclose(x16.grad.float(), x32.grad, rtol=2 ** -7, atol=1e-10)


def test_plain_tensor_policy_loss_upcasts_bf16_inputs():
    cfg, batch, lp, _ = make_case("grpo")
    lp16 = lp.detach().to(torch.bfloat16).requires_grad_()
    loss, _ = L.policy_loss(lp16, batch.old_logprobs.to(torch.bfloat16), batch.advantages,
                            batch.response_mask, cfg)
    ref, _ = L.policy_loss(lp16.detach().double(), batch.old_logprobs.to(torch.bfloat16).double(),
                           batch.advantages, batch.response_mask, cfg)
    assert loss.dtype == torch.float32 and torch.allclose(loss.double(), ref, rtol=1e-6)
