"""SPEC §6: global normalizers make the loss invariant to the micro-batch split; the faithful
hpt preset keeps the released per-micro-batch SFT mean and differs exactly by its formula."""
import pytest
import torch
import torch.distributed as dist

import megatron_hpt.loss as L
from loss_gloo import run_gloo
from test_loss_presets import make_batch

SPLITS = {1: [15], 2: [6, 9], 4: [2, 5, 3, 5]}


def split_rows(sizes):
    out, start = [], 0
    for s in sizes:
        out.append(slice(start, start + s))
        start += s
    return out


def step_loss(name, b, sizes, cfg=None, group=None, rows=None):
    """Sum of policy_loss over micro-batches with normalizers of the whole step."""
    cfg = cfg or L.preset(name)
    A = L.compute_advantages(b["R"], b["groups"], cfg, is_demo=b["demo"], response_mask=b["mask"])
    mbs = split_rows(sizes) if rows is None else rows
    batches = [dict(response_mask=b["mask"][s], is_demo=b["demo"][s], old_entropy=b["H"][s].detach())
               for s in mbs]
    norm = L.compute_normalizers(batches, cfg, group=group)
    total = 0.0
    for s in mbs:
        loss, _ = L.policy_loss(b["lp"][s], b["old"][s], A[s], b["mask"][s], cfg, is_demo=b["demo"][s],
                                entropy=b["H"][s], old_entropy=b["H"][s].detach(), normalizers=norm, step=3,
                                rewards=b["R"][s])
        total = total + loss
    return total, norm


@pytest.mark.parametrize("name", ["grpo", "hpt_clean", "egspo", "srft_paper", "dr_grpo", "gspo",
                                  "chord_phi"])
def test_micro_batch_split_invariance(name):
    b = make_batch(seed=11)
    ref, _ = step_loss(name, b, SPLITS[1])
    g_ref, = torch.autograd.grad(ref, b["lp"])
    for n in (2, 4):
        loss, norm = step_loss(name, b, SPLITS[n])
        g, = torch.autograd.grad(loss, b["lp"])
        assert norm.num_micro_batches == n
        assert torch.allclose(loss, ref, rtol=1e-6, atol=0), (name, n)
        assert torch.allclose(g, g_ref, rtol=1e-6, atol=1e-12), (name, n)


def test_hpt_micro_batch_sft_mean_is_the_released_formula():
    b = make_batch(seed=12)
    cfg = L.preset("hpt")
    lmax = cfg.max_response_length
    A = L.compute_advantages(b["R"], b["groups"], cfg, is_demo=b["demo"])
    for n in (2, 4):
        mbs = split_rows(SPLITS[n])
        demo_tokens = [float((b["mask"][s] * b["demo"][s][:, None]).sum()) for s in mbs]
        assert len(set(demo_tokens)) > 1  # micro-batches hold different demo-token counts
        loss, _ = step_loss("hpt", b, SPLITS[n])
        # released code: per micro-batch Σ(−A·r)/L_max + mean over its demo tokens of −ℓ
        # − 0.001·masked_mean(H) (the micro-batch's token mean, whatever the policy loss's
        # aggregation), averaged over the micro-batches of the step
        released = 0.0
        for s in mbs:
            m, d = b["mask"][s], b["demo"][s][:, None].double()
            r = torch.exp(b["lp"][s] - b["old"][s])
            rl = (-(A[s][:, None]) * r * m * (1 - d)).sum() / lmax
            n_demo = (m * d).sum()
            sft = (-(b["lp"][s]) * m * d).sum() / n_demo if n_demo > 0 else 0.0
            ent = (b["H"][s] * m).sum() / m.sum()
            released = released + (rl + sft - 0.001 * ent) / n
        assert torch.allclose(loss, released, rtol=1e-10)
        g, = torch.autograd.grad(loss, b["lp"])
        g_rel, = torch.autograd.grad(released, b["lp"])
        assert torch.allclose(g, g_rel, rtol=1e-10, atol=1e-14)
        # versus the global token-mean: the difference is exactly the SFT part
        glob, _ = step_loss("hpt", b, SPLITS[n], cfg=cfg.replace(sft_normalization="global"))
        d_all = b["mask"] * b["demo"][:, None].double()
        sft_global = (-(b["lp"]) * d_all).sum() / d_all.sum()
        sft_micro = sum((-(b["lp"][s]) * d_all[s]).sum() / d_all[s].sum()
                        for s in mbs if d_all[s].sum() > 0) / n
        assert not torch.allclose(loss, glob, rtol=1e-6)
        assert torch.allclose(loss - glob, sft_micro - sft_global, rtol=1e-8, atol=1e-12)


def _dp2_body(rank):
    for name in ("hpt_clean", "egspo"):
        b = make_batch(seed=13)
        ref, norm_ref = step_loss(name, b, SPLITS[4])
        g_ref, = torch.autograd.grad(ref, b["lp"])
        mine = split_rows(SPLITS[4])[rank * 2:(rank + 1) * 2]  # each DP rank: 2 micro-batches
        loss, norm = step_loss(name, b, None, group=dist.group.WORLD, rows=mine)
        g, = torch.autograd.grad(loss, b["lp"])
        total = loss.detach().clone()
        dist.all_reduce(total)  # the DP sum of the losses is the global loss
        dist.all_reduce(g)  # gradient all-reduce with SUM
        assert norm == norm_ref, (norm, norm_ref)
        assert torch.allclose(total, ref.detach(), rtol=1e-10)
        assert torch.allclose(g, g_ref, rtol=1e-10, atol=1e-14)


def test_dp2_normalizers_all_reduced_once(tmp_path):
    assert run_gloo(_dp2_body, tmp_path)


@pytest.mark.parametrize("name", ["grpo", "hpt_clean", "chord_mu"])
def test_context_parallel_token_slices_sum_to_the_rows_loss(name):
    b = make_batch(seed=14)
    cfg = L.preset(name)
    A = L.compute_advantages(b["R"], b["groups"], cfg, is_demo=b["demo"])
    norm = L.compute_normalizers([dict(response_mask=b["mask"], is_demo=b["demo"])], cfg)
    kw = dict(is_demo=b["demo"], normalizers=norm, step=2)
    full, _ = L.policy_loss(b["lp"], b["old"], A, b["mask"], cfg, entropy=b["H"], **kw)
    lengths = b["mask"].sum(-1)
    total = 0.0
    for cols in (slice(0, 3), slice(3, 7)):  # two CP ranks, each a slice of every row
        loss, _ = L.policy_loss(b["lp"][:, cols], b["old"][:, cols], A, b["mask"][:, cols], cfg,
                                entropy=b["H"][:, cols], response_lengths=lengths, **kw)
        total = total + loss
    assert torch.allclose(total, full, rtol=1e-12)
