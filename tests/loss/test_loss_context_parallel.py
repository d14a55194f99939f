"""Context parallelism without a model (loss/batch.py, policy_loss's cp_group).

- the load-balanced layout equals megatron-core's ``get_batch_on_this_cp_rank`` and
  ``cp_unshard`` inverts it (CP 2, 3, 4);
- for every preset (and a KL-loss variant), the loss and its gradient w.r.t. the per-token
  log-probs and entropies computed on CP shards by 2 gloo ranks and summed equal the unsplit
  ones (float64, to round-off): whole-row lengths, GSPO's sequence ratio, the row entropy H̄
  and the micro-batch SFT count are whole-row quantities, the rest is a sum over tokens.
"""
import pytest
import torch
import torch.distributed as dist

import megatron_hpt.loss as L
from batch_cases import T, config, make_case
from loss_gloo import run_gloo
from megatron_hpt.loss.batch import Batch, cp_shard, cp_unshard

CASES = [(name, {}) for name in L.preset_names()] + [("grpo", dict(kl_coef=0.1)),
                                                      ("gspo", dict(loss_agg_mode="token-mean"))]


@pytest.mark.parametrize("cp", [2, 3, 4])
def test_layout_is_megatrons_and_unshard_inverts_it(cp, monkeypatch):
    from megatron.core import parallel_state, utils
    t = torch.arange(2 * 24 * 3).view(2, 24, 3)
    shards = []
    for r in range(cp):
        monkeypatch.setattr(parallel_state, "get_context_parallel_world_size", lambda: cp)
        monkeypatch.setattr(parallel_state, "get_context_parallel_rank", lambda r=r: r)
        want = utils.get_batch_on_this_cp_rank({"tokens": t.clone()})["tokens"]
        got = cp_shard(t, r, cp)
        assert torch.equal(got, want) and got.shape[1] == 24 // cp
        shards.append(got)
    assert torch.equal(cp_unshard(shards), t)


def test_layout_rejects_lengths_not_divisible():
    with pytest.raises(ValueError, match="multiple of 2 x CP = 4"):
        cp_shard(torch.zeros(1, 6), 0, 2)


def test_batch_cp_shard_keeps_rows_and_whole_lengths():
    _, batch, _, _ = make_case("grpo")
    s = batch.cp_shard(1, 2)
    assert s.tokens.shape == (batch.num_rows, T // 2) and torch.equal(s.is_demo, batch.is_demo)
    assert torch.equal(s.response_lengths, batch.response_mask.sum(-1).float())
    assert torch.equal(cp_unshard([batch.cp_shard(0, 2).old_logprobs, s.old_logprobs]),
                       batch.old_logprobs)


def _loss(cfg, batch, logprobs, entropy, norm, group=None):
    extras = {"entropy": entropy} if cfg.entropy_coef > 0 else {}
    loss, _ = L.policy_loss(logprobs, batch=batch, cfg=cfg, normalizers=norm, step=7,
                            cp_group=group, **extras)
    return loss


def _cp_body(rank):
    torch.set_num_threads(1)
    for name, extra in CASES:
        cfg, batch, lp, ent = make_case(name, cfg=config(name, **extra))
        norm = L.compute_normalizers([batch], cfg)  # whole rows, as the trainer does
        whole = _loss(cfg, batch, lp, ent, norm)
        g_whole = torch.autograd.grad(whole, [lp, ent], allow_unused=True)
        shard = batch.cp_shard(rank, 2)
        lp_s = cp_shard(lp.detach(), rank, 2).requires_grad_()
        ent_s = cp_shard(ent.detach(), rank, 2).requires_grad_()
        part = _loss(cfg, shard, lp_s, ent_s, norm, group=dist.group.WORLD)
        g_part = torch.autograd.grad(part, [lp_s, ent_s], allow_unused=True)
        total = part.detach().clone()
        dist.all_reduce(total)
        assert torch.allclose(total, whole.detach(), rtol=1e-12, atol=1e-14), (name, extra)
        for gw, gp, x in zip(g_whole, g_part, (lp_s, ent_s)):
            gp = torch.zeros_like(x) if gp is None else gp
            parts = [torch.empty_like(gp) for _ in range(2)]
            dist.all_gather(parts, gp.contiguous())
            gw = torch.zeros_like(lp) if gw is None else gw
            assert torch.allclose(cp_unshard(parts), gw, rtol=1e-12, atol=1e-14), (name, extra)


def test_every_preset_loss_and_gradient_on_cp_shards_equal_unsplit(tmp_path):
    assert run_gloo(_cp_body, tmp_path)


def test_batch_to_select_split_cat():
    _, batch, _, _ = make_case("hpt")
    parts = batch.split([4, 6, 5])
    assert [p.num_rows for p in parts] == [4, 6, 5] and [p.num_rows for p in batch.split(4)] == [4, 4, 4, 3]
    back = Batch.cat(parts)
    assert all(torch.equal(back.tensors()[k], v) for k, v in batch.tensors().items())
    picked = batch.select([2, 0])
    assert torch.equal(picked.sft_weight, batch.sft_weight[[2, 0]]) and picked.mu == batch.mu
    moved = batch.to("meta")
    assert all(t.device.type == "meta" for t in moved.tensors().values())
    with pytest.raises(ValueError, match="sum to 14"):
        batch.split([4, 10])
