"""Every preset equals a plain SPEC implementation (loss value and gradient, float64)."""
import pytest
import torch

import megatron_hpt.loss as L
from loss_reference import reference

TOL = dict(rtol=1e-8, atol=1e-10)
GROUPS = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 3, 4, 4, 4]
DEMO = [0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]
REWARDS = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0]


def make_batch(seed=0, T=7):
    g = torch.Generator().manual_seed(seed)
    B = len(GROUPS)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()  # [B, T]
    lp = torch.log(torch.rand(B, T, generator=g, dtype=torch.float64) * 0.9 + 0.05)
    scale = torch.tensor([0.3, 0.05, 1e-5] * (B // 3), dtype=torch.float64)[:, None]
    old = lp + scale * torch.randn(B, T, generator=g, dtype=torch.float64)
    H = torch.rand(B, T, generator=g, dtype=torch.float64) * 2.0
    pad = mask == 0  # padding carries garbage that must not matter
    lp = torch.where(pad, torch.full_like(lp, -30.0), lp).requires_grad_()
    H = torch.where(pad, torch.full_like(H, 99.0), H).requires_grad_()
    return dict(lp=lp, old=old, mask=mask, H=H, R=torch.tensor(REWARDS, dtype=torch.float64),
                groups=torch.tensor(GROUPS), demo=torch.tensor(DEMO).bool())


OVERRIDES = {"dapo": dict(max_response_length=8, overlong_buffer_len=3),
             "reinforce_pp": dict(gamma=0.9)}
REF_KW = {"dapo": dict(max_len=8, cache=3), "reinforce_pp": dict(gamma=0.9)}


def library_loss(name, b, step=7, cfg=None):
    cfg = cfg or L.preset(name).replace(**OVERRIDES.get(name, {}))
    A = L.compute_advantages(b["R"], b["groups"], cfg, is_demo=b["demo"], response_mask=b["mask"])
    loss, metrics = L.policy_loss(b["lp"], b["old"], A, b["mask"], cfg, is_demo=b["demo"],
                                  entropy=b["H"], old_entropy=b["H"].detach(), step=step,
                                  rewards=b["R"])
    return loss, metrics


@pytest.mark.parametrize("name", L.preset_names())
def test_preset_matches_spec_reference(name):
    b = make_batch()
    cfg = L.preset(name).replace(**OVERRIDES.get(name, {}))
    loss, metrics = library_loss(name, b, cfg=cfg)
    g_lib = torch.autograd.grad(loss, [b["lp"], b["H"]], allow_unused=True)
    ref = reference(name, b["lp"], b["old"], b["R"], GROUPS, b["mask"], DEMO, b["H"], step=7,
                    L_max=cfg.max_response_length, **REF_KW.get(name, {}))
    g_ref = torch.autograd.grad(ref, [b["lp"], b["H"]], allow_unused=True)
    assert torch.allclose(loss, ref, **TOL), (name, loss.item(), float(ref))
    for gl, gr in zip(g_lib, g_ref):
        gl = torch.zeros_like(b["lp"]) if gl is None else gl
        gr = torch.zeros_like(b["lp"]) if gr is None else gr
        assert torch.allclose(gl, gr, **TOL), (name, (gl - gr).abs().max().item())
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
    assert gl.abs().sum() >= 0  # gradients compared above


@pytest.mark.parametrize("name", ["grpo", "dapo", "gspo", "egspo", "hpt_clean"])
def test_clipping_is_exercised(name):
    b = make_batch()
    _, metrics = library_loss(name, b)
    assert 0.0 < float(metrics["clip_fraction"]) < 1.0


def test_sft_gradient_is_mean_nll_gradient():
    b = make_batch(seed=1)
    loss, _ = L.policy_loss(b["lp"], None, None, b["mask"], L.preset("sft"))
    g, = torch.autograd.grad(loss, b["lp"])
    nll = -(b["lp"] * b["mask"]).sum() / b["mask"].sum()
    g_ref, = torch.autograd.grad(nll, b["lp"])
    assert torch.allclose(g, g_ref, **TOL)
    assert torch.allclose(loss, nll, **TOL)


def test_grpo_at_ratio_one_equals_reinforce_with_grpo_advantage():
    b = make_batch(seed=2)
    on = ~b["demo"]
    cfg = L.preset("grpo")
    A = L.compute_advantages(b["R"][on], b["groups"][on], cfg)
    lp, mask = b["lp"], b["mask"][on]
    loss_grpo, m = L.policy_loss(lp[on], lp[on].detach(), A, mask, cfg)
    reinforce = L.preset("reinforce").replace(loss_agg_mode=cfg.loss_agg_mode)
    loss_rf, _ = L.policy_loss(lp[on], None, A, mask, reinforce)
    g1, = torch.autograd.grad(loss_grpo, lp)
    g2, = torch.autograd.grad(loss_rf, lp)
    assert torch.allclose(g1, g2, **TOL)
    assert float(m["clip_fraction"]) == 0.0 and float(m["ratio_max"]) == 1.0


def test_egspo_with_gate_one_equals_chord_phi():
    b = make_batch(seed=3)
    egspo = L.preset("egspo").replace(egspo_gate_one=True)
    l1, _ = library_loss("egspo", b, cfg=egspo)
    l2, _ = library_loss("chord_phi", b, cfg=L.preset("chord_phi").replace(
        on_policy_mask="ppo_clip", log_ratio_clamp=0.0))
    g1, = torch.autograd.grad(l1, b["lp"])
    g2, = torch.autograd.grad(l2, b["lp"])
    assert torch.allclose(l1, l2, **TOL) and torch.allclose(g1, g2, **TOL)


@pytest.mark.parametrize("mode", ["absolute", "soft"])
def test_egspo_gate_modes(mode):
    b = make_batch(seed=4)
    cfg = L.preset("egspo").replace(egspo_gate_mode=mode, egspo_tau=1.0, egspo_kappa=0.5)
    _, m = library_loss("egspo", b, cfg=cfg)
    h, mask = b["H"].detach(), b["mask"] * (~b["demo"])[:, None]
    if mode == "absolute":
        expect = ((h >= 1.0).double() * mask).sum() / mask.sum()
    else:
        tau = torch.quantile(h[mask > 0], 0.8)
        expect = (torch.sigmoid((h - tau) / 0.5) * mask).sum() / mask.sum()
    assert torch.allclose(m["egspo_gate_fraction"], expect, **TOL)


def test_egspo_attenuation_zero_is_hard_mask():
    b = make_batch(seed=5)
    cfg = L.preset("egspo").replace(egspo_attenuation="zero", sft_coef=0.0, mu_schedule="none")
    loss, _ = library_loss("egspo", b, cfg=cfg)
    g, = torch.autograd.grad(loss, b["lp"])
    h, mask = b["H"].detach(), b["mask"] * (~b["demo"])[:, None]
    tau = torch.quantile(h[mask > 0], 0.8)
    low = (h < tau) & (mask > 0)
    assert low.any() and torch.all(g[low] == 0)


def test_kl_loss_term():
    b = make_batch(seed=6)
    ref_lp = b["lp"].detach() + 0.2
    cfg = L.preset("grpo").replace(kl_coef=0.04, kl_estimator="k3")
    A = L.compute_advantages(b["R"], b["groups"], cfg, is_demo=b["demo"])
    loss, m = L.policy_loss(b["lp"], b["old"], A, b["mask"], cfg, is_demo=b["demo"],
                            ref_logprobs=ref_lp)
    base, _ = L.policy_loss(b["lp"], b["old"], A, b["mask"], cfg.replace(kl_coef=0.0),
                            is_demo=b["demo"])
    rows = []
    for i in range(len(GROUPS)):
        ts = [t for t in range(7) if b["mask"][i, t] > 0]
        d = [ref_lp[i, t] - b["lp"][i, t] for t in ts]
        rows.append(sum(torch.exp(x) - x - 1 for x in d) / len(ts))
    kl = sum(rows) / len(rows)
    assert torch.allclose(loss - base, 0.04 * kl, **TOL)
    g1, = torch.autograd.grad(loss - base, b["lp"])
    g2, = torch.autograd.grad(0.04 * kl, b["lp"])
    assert torch.allclose(g1, g2, **TOL)


def test_hpt_switch_mode_row_weights_drop_rollouts():
    b = make_batch(seed=7)
    cfg = L.preset("hpt_clean")
    A = L.compute_advantages(b["R"], b["groups"], cfg, is_demo=b["demo"])
    drop = torch.tensor([g == 0 for g in GROUPS])  # prompt 0 in the SFT branch
    w_on = (~drop).double()
    loss, _ = L.policy_loss(b["lp"], b["old"], A, b["mask"], cfg, is_demo=b["demo"],
                            entropy=b["H"], on_policy_weight=w_on)
    keep = ~drop | b["demo"]
    A2 = L.compute_advantages(b["R"][keep], b["groups"][keep], cfg, is_demo=b["demo"][keep])
    loss2, _ = L.policy_loss(b["lp"][keep], b["old"][keep], A2, b["mask"][keep], cfg,
                             is_demo=b["demo"][keep], entropy=b["H"][keep])
    ent_gap = cfg.entropy_coef * (  # hpt_clean: entropy token-mean over the rows present
        (b["H"] * b["mask"]).sum() / b["mask"].sum()
        - (b["H"][keep] * b["mask"][keep]).sum() / b["mask"][keep].sum())
    assert torch.allclose(loss, loss2 - ent_gap, **TOL)


@pytest.mark.parametrize("name", ["grpo", "luffy", "hpt", "srft", "egspo"])
def test_padding_garbage_never_reaches_the_loss(name):
    b = make_batch(seed=8)
    loss, _ = library_loss(name, b)
    g, = torch.autograd.grad(loss, b["lp"])
    pad = b["mask"] == 0
    dirty = dict(b)
    dirty["old"] = torch.where(pad, torch.full_like(b["old"], float("-inf")), b["old"])
    dirty["lp"] = torch.where(pad, torch.full_like(b["lp"], float("nan")), b["lp"].detach()).requires_grad_()
    dirty["H"] = torch.where(pad, torch.full_like(b["H"], float("inf")), b["H"].detach())
    loss2, metrics = library_loss(name, dirty)
    g2, = torch.autograd.grad(loss2, dirty["lp"])
    assert torch.allclose(loss, loss2, rtol=1e-12) and torch.allclose(g, g2, rtol=1e-12)
    assert all(torch.isfinite(v) for v in metrics.values())


def test_hpt_soft_mode_row_weights_scale_each_term():
    """Soft mode: per-row (on, off, sft) coefficients weigh the on-policy, off-policy demo and
    SFT terms linearly (denominators fixed while every weight is non-zero)."""
    b = make_batch(seed=9)
    cfg = L.preset("hpt_clean").replace(demo_rl_coef=1.0, mixed_group=True)
    A = L.compute_advantages(b["R"], b["groups"], cfg, is_demo=b["demo"])
    ones = torch.ones(len(GROUPS), dtype=torch.float64)

    def f(on, off, sft):
        loss, _ = L.policy_loss(b["lp"], b["old"], A, b["mask"], cfg, is_demo=b["demo"],
                                entropy=b["H"], on_policy_weight=on * ones,
                                demo_rl_weight=off * ones, sft_weight=sft * ones)
        return loss

    base = f(1, 1, 1).detach()
    x, y, z = (f(*w).detach() - base for w in ((2, 1, 1), (1, 2, 1), (1, 1, 2)))
    assert min(abs(x.item()), abs(y.item()), abs(z.item())) > 1e-6  # every term is present
    expect = base + (0.25 - 1) * x + (0.5 - 1) * y + (0.125 - 1) * z
    assert torch.allclose(f(0.25, 0.5, 0.125), expect, rtol=1e-10)
