"""Advantage estimators, DAPO shaping and filter, KL estimators and μ schedule vs plain formulas."""
import math

import pytest
import torch

import megatron_hpt.loss as L

R = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 2.0, 3.0, 4.0], dtype=torch.float64)
G = torch.tensor([7, 7, 7, 7, 3, 3, 9, 5, 5])  # sizes 4, 2, 1, 2


def plain_groups():
    return {7: [0, 1, 2, 3], 3: [4, 5], 9: [6], 5: [7, 8]}


def test_grpo_unbiased_std_and_group_of_one():
    A = L.compute_advantages(R, G, L.preset("grpo"))
    for rows in plain_groups().values():
        vals = [float(R[i]) for i in rows]
        n = len(vals)
        mean = sum(vals) / n if n > 1 else 0.0
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 1.0
        for i in rows:
            assert A[i].item() == pytest.approx((float(R[i]) - mean) / (std + 1e-6), rel=1e-12)
    assert A[6].item() == pytest.approx(2.0 / (1 + 1e-6))


def test_dr_grpo_and_rloo():
    A = L.compute_advantages(R, G, L.preset("dr_grpo"))
    B = L.compute_advantages(R, G, L.preset("rloo"))
    for rows in plain_groups().values():
        n = len(rows)
        mean = sum(float(R[i]) for i in rows) / n if n > 1 else 0.0
        for i in rows:
            assert A[i].item() == pytest.approx(float(R[i]) - mean, abs=1e-12)
            if n > 1:
                loo = sum(float(R[j]) for j in rows if j != i) / (n - 1)
                assert B[i].item() == pytest.approx(float(R[i]) - loo, abs=1e-12)
                assert B[i].item() == pytest.approx(n / (n - 1) * (float(R[i]) - mean), abs=1e-12)
            else:
                assert B[i].item() == pytest.approx(float(R[i]))


def test_mixed_group_includes_demos_else_demos_get_zero():
    demo = torch.tensor([0, 0, 0, 1, 0, 0, 0, 0, 1]).bool()
    cfg = L.preset("dr_grpo")
    A = L.compute_advantages(R, G, cfg, is_demo=demo)
    assert A[3] == 0 and A[8] == 0
    assert A[0].item() == pytest.approx(1.0 - 2.0 / 3.0)
    assert A[7].item() == pytest.approx(3.0)  # its group without the demo has size one: mean 0
    A_mixed = L.compute_advantages(R, G, cfg.replace(mixed_group=True), is_demo=demo)
    assert A_mixed[3].item() == pytest.approx(1.0 - 0.75)
    assert A_mixed[0].item() == pytest.approx(1.0 - 0.75)


def _returns_plain(rewards_last, mask, gamma):
    out = torch.zeros_like(mask)
    for i in range(mask.shape[0]):
        ts = [t for t in range(mask.shape[1]) if mask[i, t] > 0]
        for t in ts:
            out[i, t] = rewards_last[i] * gamma ** (ts[-1] - t)
    return out


@pytest.mark.parametrize("variant", ["reinforce_pp", "reinforce_pp_baseline"])
def test_reinforce_pp_whitened_over_batch(variant):
    mask = torch.ones(9, 5, dtype=torch.float64)
    for i, n in enumerate([5, 3, 1, 4, 2, 5, 3, 4, 1]):
        mask[i, n:] = 0
    cfg = L.preset("reinforce_pp").replace(advantage_estimator=variant, gamma=0.95)
    A = L.compute_advantages(R, G, cfg, response_mask=mask)
    outcome = R.clone()
    if variant.endswith("baseline"):
        for rows in plain_groups().values():
            mean = sum(float(R[i]) for i in rows) / len(rows) if len(rows) > 1 else 0.0
            for i in rows:
                outcome[i] = R[i] - mean
    ret = _returns_plain(outcome, mask, 0.95)
    vals = ret[mask > 0]
    mean, var = vals.mean(), vals.var(unbiased=True)
    expect = (ret - mean) / torch.sqrt(var + 1e-8) * mask
    assert torch.allclose(A, expect, rtol=1e-10, atol=1e-12)


def test_kl_in_reward_for_reinforce_pp():
    mask = torch.ones(9, 3, dtype=torch.float64)
    old = torch.randn(9, 3, dtype=torch.float64)
    ref = old + 0.1
    cfg = L.preset("reinforce_pp").replace(kl_coef=0.5, gamma=1.0)
    A = L.compute_advantages(R, G, cfg, response_mask=mask, old_logprobs=old, ref_logprobs=ref)
    tok = -0.5 * (old - ref)  # k1 = −δ = ℓ − ℓ_ref
    tok[:, -1] += R
    ret = torch.flip(torch.cumsum(torch.flip(tok, [1]), 1), [1])
    expect = (ret - ret.mean()) / torch.sqrt(ret.var() + 1e-8)
    assert torch.allclose(A, expect, rtol=1e-10)


def test_dapo_overlong_shaping_three_regions():
    lengths = torch.tensor([10, 16, 18, 20, 25])
    r = L.overlong_reward(lengths, max_response_length=20, buffer_len=4, penalty_factor=1.0)
    assert r.tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])
    mask = (torch.arange(20)[None] < lengths[:4, None]).double()
    cfg = L.preset("dapo").replace(max_response_length=20, overlong_buffer_len=4,
                                   advantage_estimator="reinforce")
    A = L.compute_advantages(torch.ones(4, dtype=torch.float64), torch.arange(4), cfg,
                             response_mask=mask)
    assert A.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0])


def test_dapo_group_filter():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    keep = L.group_filter(rewards, groups)
    assert keep.tolist() == [False, False, False, False, True, True, False, False]


def test_kl_estimators():
    lp = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64)
    ref = torch.tensor([-1.5, -1.0, -0.5], dtype=torch.float64)
    d = ref - lp
    assert torch.allclose(L.kl_penalty(lp, ref, "k1"), -d)
    assert torch.allclose(L.kl_penalty(lp, ref, "k2"), 0.5 * d ** 2)
    assert torch.allclose(L.kl_penalty(lp, ref, "k3"), torch.exp(d) - d - 1)
    big = L.kl_penalty(torch.tensor([-30.0]), torch.tensor([0.0]), "k3")
    assert big.item() == 10.0


def test_chord_mu_schedule():
    cfg = L.preset("chord_mu").replace(mu_warmup_steps=10, mu_decay_steps=100)
    assert L.mu_at_step(0, cfg) == 0.0
    assert L.mu_at_step(5, cfg) == pytest.approx(0.45)
    assert L.mu_at_step(10, cfg) == pytest.approx(0.9)
    assert L.mu_at_step(60, cfg) == pytest.approx(0.05 + 0.85 * 0.5)
    assert L.mu_at_step(110, cfg) == pytest.approx(0.05) and L.mu_at_step(500, cfg) == 0.05
    assert L.mu_at_step(3, L.preset("chord_phi")) == 0.1
