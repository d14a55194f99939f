"""training/packing.py: first-fit-decreasing plans, padded cuts, the THD stream (row boundaries,
position ids, loss masks) and its unpacking, checked against plain per-row constructions."""
import pytest
import torch

from megatron_hpt.training import packing


def _rows(lengths, seq=16, prompt=2, seed=0):
    """Right-padded rows whose loss mask covers [prompt, length)."""
    g = torch.Generator().manual_seed(seed)
    n = len(lengths)
    tokens = torch.randint(4, 50, (n, seq), generator=g)
    mask = torch.zeros(n, seq)
    for i, L in enumerate(lengths):
        tokens[i, L:] = 0
        mask[i, prompt:L] = 1.0
    from megatron_hpt.loss.batch import Batch
    return Batch(tokens=tokens, labels=tokens.roll(-1, 1), response_mask=mask,
                 position_ids=torch.arange(seq).expand(n, seq).contiguous(),
                 old_logprobs=-torch.rand(n, seq, generator=g) * mask,
                 is_demo=torch.zeros(n, dtype=torch.bool))


def test_row_lengths_and_pad_multiple():
    r = _rows([5, 16, 3, 1])
    assert packing.row_lengths(r.response_mask) == [5, 16, 3, 1]  # no mask -> 1
    assert packing.pad_multiple(4, True, 1) == 4 and packing.pad_multiple(4, False, 2) == 4
    assert packing.pad_multiple(2, True, 3) == 6 and packing.pad_multiple(8, False, 1) == 1


def test_first_fit_decreasing_by_hand():
    # sorted: 10(r1) 9(r4) 6(r0) 5(r3) 3(r2) 2(r5); budget 20, padded cost rows x longest
    # r1 opens bin A (10); r4: 2x10=20 fits A; r0: 3x10>20, opens B (6); r3: 2x6 ok; r2: 3x6 ok;
    # r5: A full (30), B 4x6=24>20 -> C
    assert packing.plan_token_budget([6, 10, 3, 5, 9, 2], 20) == [[1, 4], [0, 2, 3], [5]]
    # packed: Σ lengths; A: 10+9=19, r0 -> B 6, r3 -> B 11, r2 -> B 14, r5 -> B 16
    assert packing.plan_token_budget([6, 10, 3, 5, 9, 2], 20, packed=True) == [[1, 4], [0, 2, 3, 5]]
    # rounded to a multiple of 4: r1 12, r4 12, r0 8, r3 8, r2 4, r5 4 (padded): r1 -> A;
    # r4: 2x12 > 20 -> B; r0 -> C; r3: 2x8 fits C; r2: 3x8 > 20 -> D; r5: 2x4 fits D
    assert packing.plan_token_budget([6, 10, 3, 5, 9, 2], 20, multiple=4) == [[1], [4], [0, 3], [2, 5]]
    with pytest.raises(ValueError, match="--max-tokens-per-micro-batch 8: row 1 needs 10"):
        packing.plan_token_budget([6, 10], 8)


def test_every_micro_batch_respects_the_budget_and_holds_each_row_once():
    g = torch.Generator().manual_seed(1)
    lengths = [int(v) for v in torch.randint(1, 200, (101,), generator=g)]
    for packed in (False, True):
        bins = packing.plan_token_budget(lengths, 256, multiple=8, packed=packed)
        assert sorted(i for b in bins for i in b) == list(range(101))
        for b in bins:
            need = [packing.round_up(lengths[i], 8) for i in b]
            assert (sum(need) if packed else len(b) * max(need)) <= 256
        assert bins == packing.plan_token_budget(lengths, 256, multiple=8, packed=packed)


def test_padded_cut_keeps_every_loss_token_and_unpacks():
    r = _rows([5, 16, 3, 7, 9])
    index = packing.plan(r, 2, max_tokens=24, multiple=2)
    mbs = packing.build(r, index, True, multiple=2)
    for idx, mb in zip(index, mbs):
        longest = max(packing.row_lengths(r.response_mask[idx]))
        assert mb.tokens.shape == (len(idx), min(packing.round_up(longest, 2), 16))
        assert torch.equal(mb.tokens, r.tokens[idx, :mb.tokens.shape[1]])
        assert torch.equal(mb.is_demo, r.is_demo[idx])
        assert mb.tokens.numel() <= 24
    back = packing.unpack([mb.old_logprobs for mb in mbs], index, 5, 16)
    assert torch.equal(back, r.old_logprobs)
    # no budget: consecutive fixed-size micro-batches at full length (the old behaviour)
    fixed = packing.build(r, packing.plan(r, 2), False)
    assert [mb.tokens.shape for mb in fixed] == [(2, 16), (2, 16), (1, 16)]


def test_thd_stream_boundaries_positions_masks_and_unpack():
    r = _rows([5, 12, 3])
    mb = packing.pack_thd(packing.take(r, [0, 1, 2], 12), multiple=2)
    lens = [6, 12, 4]  # each row's length rounded up to 2
    assert mb.cu_seqlens.tolist() == [0, 6, 18, 22] and mb.cu_seqlens.dtype == torch.int32
    assert mb.tokens.shape == (1, 22)
    want_pos = torch.cat([torch.arange(n) for n in lens])
    assert torch.equal(mb.position_ids[0], want_pos)
    for i, (a, n) in enumerate(zip([0, 6, 18], lens)):
        assert torch.equal(mb.tokens[0, a:a + n], r.tokens[i, :n])
        assert torch.equal(mb.labels[0, a:a + n], r.labels[i, :n])
    # per-row fields stay padded [rows, longest]; the loss mask is untouched
    assert torch.equal(mb.response_mask, r.response_mask[:, :12])
    # unpack: a per-token function of the stream equals the same function of the padded rows
    stream = (mb.tokens.float() * 0.5).requires_grad_()
    rows = packing.to_rows(mb, stream)
    want = (r.tokens[:, :12].float() * 0.5) * (torch.arange(12) < torch.tensor(lens)[:, None])
    assert torch.equal(rows, want)
    (rows * mb.response_mask).sum().backward()  # gradient flows back to the stream positions
    assert torch.equal(stream.grad[0], torch.cat([mb.response_mask[i, :n] for i, n in enumerate(lens)]))
    psp = packing.packed_seq_params(mb)
    assert psp.qkv_format == "thd" and psp.max_seqlen_q == 12 and psp.cu_seqlens_q.tolist() == [0, 6, 18, 22]
    assert packing.packed_seq_params(r) is None


@pytest.mark.parametrize("preset_name", ["grpo", "hpt_clean", "luffy"])
def test_loss_head_on_a_thd_stream_equals_the_padded_rows(preset_name, monkeypatch):
    """The loss head reads a packed micro-batch through its row boundaries: with logits that are
    a function of the token only (so packing cannot change them), loss and gradient equal the
    padded micro-batch's."""
    from megatron_hpt.loss import preset
    from megatron_hpt.training import loss_head
    from megatron_hpt.training.loss_head import LossHead
    monkeypatch.setattr(loss_head.parallel_state, "get_tensor_model_parallel_group", lambda: None)
    monkeypatch.setattr(loss_head.parallel_state, "get_context_parallel_world_size", lambda: 1)
    monkeypatch.setattr(loss_head.parallel_state, "get_data_parallel_group",
                        lambda with_context_parallel=False: None)
    r = _rows([5, 12, 9, 3, 16])
    r.is_demo = torch.tensor([False, False, False, True, False])
    r.advantages = torch.tensor([0.5, -1.0, 0.7, 1.0, -0.2])
    if preset_name.startswith("hpt"):
        r.on_policy_weight = torch.ones(5)
        r.sft_weight = r.is_demo.float()
    head = LossHead(preset(preset_name))
    padded = packing.take(r, range(5), 16)
    packed = packing.pack_thd(padded, multiple=1)
    results = []
    for mb in (padded, packed):
        head.attach_normalizers([mb])
        table = torch.randn(50, 50, generator=torch.Generator().manual_seed(0)).requires_grad_()
        loss, n, _ = head(table[mb.tokens], mb)
        loss.backward()
        results.append((float(loss.detach()), int(n), table.grad))
    (l_pad, n_pad, g_pad), (l_pack, n_pack, g_pack) = results
    assert packed.tokens.shape == (1, 5 + 12 + 9 + 3 + 16) and n_pad == n_pack
    assert l_pack == pytest.approx(l_pad, rel=1e-6) and l_pad != 0.0
    assert torch.allclose(g_pack, g_pad, rtol=1e-5, atol=1e-7)
