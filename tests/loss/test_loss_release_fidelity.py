"""The release-following presets equal their released code, term by term, over a whole step.

The released formulas are written here plainly from the releases' definitions (not imported):
TsinghuaC3I/Unify-Post-Training ``mix_actor.update_policy`` / ``mix_core_alg`` / verl
``compute_policy_loss`` (hpt, luffy, srft), ``mix_trainer`` switch gate (rows removed),
Trinity-RFT ``MIXCHORDPolicyLossFn`` + ``PPOPolicyLossFn`` (chord). A step mixes gated and
ungated prompts, all-correct and all-wrong groups, extreme ratios (|log r| up to 25) and several
micro-batches; the release runs one micro-batch per GPU and averages GPUs, so the reference is
the mean of the per-micro-batch losses.
"""
import math

import pytest
import torch

import megatron_hpt.loss as L
from megatron_hpt.hybrid import hpt_branch_coefficients
from megatron_hpt.loss.batch import Batch
from megatron_hpt.hybrid.gate_rows import chord_step, gated_rows, update_rows

N, T, L_MAX = 4, 6, 16
CORRECT = [0, 4, 1, 3, 0, 2]  # all-wrong (gated at 0), all-correct, mixed
TOL = dict(rtol=1e-9, atol=1e-11)


def make_step(seed=0):
    """Per prompt N rollouts then its demonstration; leaf log-probs / entropies per row."""
    g = torch.Generator().manual_seed(seed)
    P = len(CORRECT)
    rows = P * (N + 1)
    is_demo = torch.tensor(([False] * N + [True]) * P)
    R = torch.zeros(rows, dtype=torch.float64)
    for j, c in enumerate(CORRECT):
        R[j * (N + 1): j * (N + 1) + N] = torch.tensor([1.0] * c + [0.0] * (N - c))
        R[j * (N + 1) + N] = 1.0  # demonstrations are correct
    lengths = torch.randint(2, T + 1, (rows,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    lp = torch.log(torch.rand(rows, T, generator=g, dtype=torch.float64) * 0.9 + 0.05)
    noise = torch.randn(rows, T, generator=g, dtype=torch.float64) * 0.3
    noise[::3, 0] = 25.0   # extreme ratios: r = e^-25 and e^25
    noise[1::5, 1] = -25.0
    old = lp + noise
    H = torch.rand(rows, T, generator=g, dtype=torch.float64) * 2
    return dict(lp=lp.requires_grad_(), old=old, H=H.requires_grad_(), mask=mask, R=R,
                is_demo=is_demo, prompt=torch.arange(P).repeat_interleave(N + 1))


def mmean(x, m):
    """verl masked_mean."""
    return (x * m).sum() / m.sum()


def project_loss(cfg, step, gate=None, micro=5, extra=None):
    """The project's path: gate weights -> removed rows -> micro-batches -> advantages ->
    normalizers of the step -> Σ of the micro-batch losses."""
    n = len(step["R"])
    # labels carry each row's index in the step, so lp and H follow the rows the gate keeps
    rows = Batch(tokens=torch.zeros(n, 1, dtype=torch.long),
                 labels=torch.arange(n)[:, None], position_ids=torch.zeros(n, 1, dtype=torch.long),
                 response_mask=step["mask"], old_logprobs=step["old"], rewards=step["R"],
                 is_demo=step["is_demo"], prompt_index=step["prompt"])
    if gate is not None:
        br = hpt_branch_coefficients(torch.tensor(CORRECT), N, gate, "switch")
        per = lambda v: v[:, None].expand(-1, N + 1).reshape(-1)  # noqa: E731
        rows = rows.replace(on_policy_weight=per(br.on_policy) * (~step["is_demo"]),
                            sft_weight=per(br.sft) * step["is_demo"],
                            demo_rl_weight=per(br.off_policy) * 0)
        rows = gated_rows(rows)
    mbs = rows.select(update_rows(rows, len(CORRECT), 1)[0]).split(micro)
    cat = lambda k: torch.cat([getattr(mb, k) for mb in mbs])  # noqa: E731
    adv = L.compute_advantages(cat("rewards"), cat("prompt_index"), cfg, is_demo=cat("is_demo"))
    keys = ("is_demo", "on_policy_weight", "sft_weight", "demo_rl_weight")
    norm = L.compute_normalizers([dict(response_mask=mb.response_mask,
                                       old_entropy=step["H"][mb.labels[:, 0]].detach(),
                                       **{k: getattr(mb, k) for k in keys
                                          if getattr(mb, k) is not None}) for mb in mbs], cfg)
    total, off = 0.0, 0
    for mb in mbs:
        b, idx = mb.num_rows, mb.labels[:, 0]
        loss, _ = L.policy_loss(step["lp"][idx], mb.old_logprobs, adv[off:off + b],
                                mb.response_mask, cfg, entropy=step["H"][idx], rewards=mb.rewards,
                                normalizers=norm,
                                **{k: getattr(mb, k) for k in keys if getattr(mb, k) is not None},
                                **(extra or {}))
        total, off = total + loss, off + b
    return total, len(mbs)


def grads(loss, step):
    return torch.autograd.grad(loss, [step["lp"], step["H"]], allow_unused=True)


def check(lib, ref, step):
    assert torch.allclose(lib, ref, **TOL), (float(lib), float(ref))
    for a, b in zip(grads(lib, step), grads(ref, step)):
        a = torch.zeros_like(step["lp"]) if a is None else a
        b = torch.zeros_like(step["lp"]) if b is None else b
        assert torch.allclose(a, b, **TOL), (a - b).abs().max()


def split(idx, micro):
    return [idx[i:i + micro] for i in range(0, len(idx), micro)]


def group_adv(R, rows, prompt, std):
    A = {}
    for j in set(int(prompt[i]) for i in rows):
        members = [i for i in rows if int(prompt[i]) == j]
        vals = torch.tensor([float(R[i]) for i in members], dtype=torch.float64)
        mean, sd = (vals.mean(), vals.std()) if len(members) > 1 else (0.0, 1.0)
        for i in members:
            A[i] = (float(R[i]) - mean) / (sd + 1e-6) if std else float(R[i]) - mean
    return A


@pytest.mark.parametrize("micro", [3, 5, 100])
def test_hpt_equals_release_switch_gate(micro):
    """mix_trainer switch (gate 0): rollouts of all-wrong prompts removed, one demo each; other
    prompts lose their demo. update_policy(offline_loss_type=sft) per micro-batch:
    Σ(−A·r)/L_max over rollouts + mean(−ℓ) over demos − 0.001·masked_mean(H)."""
    s = make_step(1)
    cfg = L.preset("hpt").replace(max_response_length=L_MAX)
    keep = [i for i in range(len(s["R"]))
            if bool(s["is_demo"][i]) == (CORRECT[int(s["prompt"][i])] <= 0)]
    on = [i for i in keep if not s["is_demo"][i]]
    A = group_adv(s["R"], on, s["prompt"], std=False)
    losses = []
    for mb in split(keep, micro):
        m, lp, H = s["mask"][mb], s["lp"][mb], s["H"][mb]
        r = torch.exp(lp - s["old"][mb])
        adv = torch.tensor([A.get(i, 0.0) for i in mb], dtype=torch.float64)[:, None]
        on_m = m * torch.tensor([not s["is_demo"][i] for i in mb]).double()[:, None]
        demo_m = m - on_m
        pg = (-adv * r * on_m).sum() / L_MAX
        sft = mmean(-lp, demo_m) if demo_m.sum() > 0 else 0.0  # NaN -> skipped in the release
        losses.append(pg + sft - 0.001 * mmean(H, m))
    ref = sum(losses) / len(losses)
    lib, n_mb = project_loss(cfg, s, gate=0, micro=micro)
    assert n_mb == len(losses)
    check(lib, ref, s)


@pytest.mark.parametrize("micro", [4, 100])
def test_luffy_equals_release(micro):
    """compute_token_on_off_policy_loss (p_div_p_0.1, loss_remove_token_mean, remove clip),
    advantage over the mixed group without std, entropy masked_mean per micro-batch."""
    s = make_step(2)
    cfg = L.preset("luffy").replace(max_response_length=L_MAX)
    rows = list(range(len(s["R"])))
    A = group_adv(s["R"], rows, s["prompt"], std=False)
    losses = []
    for mb in split(rows, micro):
        m, lp, H = s["mask"][mb], s["lp"][mb], s["H"][mb]
        prefix = torch.tensor([bool(s["is_demo"][i]) for i in mb]).double()[:, None]
        adv = torch.tensor([A[i] for i in mb], dtype=torch.float64)[:, None]
        on_l = -adv * torch.exp(lp - s["old"][mb])
        p = torch.exp(lp)
        off_l = -adv * (p / (p + 0.1))
        pg = ((off_l * prefix + on_l * (1 - prefix)) * m).sum() / L_MAX
        losses.append(pg - 0.001 * mmean(H, m))
    check(project_loss(cfg, s, micro=micro)[0], sum(losses) / len(losses), s)


@pytest.mark.parametrize("micro", [4, 100])
def test_srft_equals_release(micro):
    """update_policy(offline_loss_type=srft): on_coef = 0.1·exp(H̄) for reward == 1 else −1 on
    −on_coef·ℓ (all-correct groups included), demos −A·p/(p+0.1), SFT masked_mean of
    −0.5·exp(−H̄)·ℓ over the micro-batch's demos; H̄ = masked_mean(H, axis=-1), detached."""
    s = make_step(3)
    cfg = L.preset("srft").replace(max_response_length=L_MAX)
    rows = list(range(len(s["R"])))
    A = group_adv(s["R"], rows, s["prompt"], std=False)
    losses = []
    for mb in split(rows, micro):
        m, lp, H = s["mask"][mb], s["lp"][mb], s["H"][mb]
        hbar = ((H * m).sum(-1) / m.sum(-1)).detach()[:, None]
        prefix = torch.tensor([bool(s["is_demo"][i]) for i in mb]).double()[:, None]
        correct = torch.tensor([float(s["R"][i]) == 1.0 for i in mb])[:, None]
        on_coef = torch.where(correct, 0.1 * torch.exp(hbar), -torch.ones_like(hbar))
        adv = torch.tensor([A[i] for i in mb], dtype=torch.float64)[:, None]
        p = torch.exp(lp)
        pg = ((-adv * p / (p + 0.1) * prefix - on_coef * lp * (1 - prefix)) * m).sum() / L_MAX
        dm = m * prefix
        sft = mmean(-(lp * 0.5 * torch.exp(-hbar)), dm) if dm.sum() > 0 else 0.0
        losses.append(pg + sft - 0.001 * mmean(H, m))
    check(project_loss(cfg, s, micro=micro)[0], sum(losses) / len(losses), s)


@pytest.mark.parametrize("name", ["chord_mu", "chord_phi"])
def test_chord_equals_trinity(name):
    """MIXCHORDPolicyLossFn on one GPU, one micro-batch (the project's token means are
    global, so its 3-way micro-batch split must give the same): PPOPolicyLossFn with the
    log-ratio clamped to ±20 and the dual clip c = 3 for A < 0, token-mean; SFT(φ) token-mean;
    μ = mu_schedule_function(global_step) with global_step = iteration + 1."""
    s = make_step(4)
    cfg = L.preset(name)
    iteration = 6
    step_no = chord_step(iteration)
    assert step_no == 7
    on = [i for i in range(len(s["R"])) if not s["is_demo"][i]]
    dm = [i for i in range(len(s["R"])) if s["is_demo"][i]]
    A = group_adv(s["R"], on, s["prompt"], std=True)
    lp, m = s["lp"], s["mask"]
    ratio = torch.exp(torch.clamp(lp[on] - s["old"][on], -20.0, 20.0))
    adv = torch.tensor([A[i] for i in on], dtype=torch.float64)[:, None].expand_as(ratio)
    l1, l2 = -adv * ratio, -adv * torch.clamp(ratio, 0.8, 1.2)
    clip1 = torch.maximum(l1, l2)
    pg = torch.where(adv < 0, torch.minimum(-adv * 3.0, clip1), clip1)
    grpo = mmean(pg, m[on])
    p = torch.exp(lp[dm])
    w = (p * (1 - p)).detach() if name == "chord_phi" else torch.ones_like(p)
    sft = mmean(-lp[dm] * w, m[dm])
    if name == "chord_phi":
        mu = 0.1
    else:
        mu = 0.05 + (0.9 - 0.05) * 0.5 * (1 + math.cos(math.pi * step_no / 200))
    ref = (1 - mu) * grpo + mu * sft
    lib, n_mb = project_loss(cfg, s, micro=11, extra={"step": step_no})
    assert n_mb == 3
    check(lib, ref, s)
    assert float((adv < 0).logical_and(ratio > 3).sum()) > 0  # the dual clip was exercised


def test_dual_clip_changes_chord_only_with_a_negative_large_ratio():
    s = make_step(4)
    plain = L.preset("chord_phi").replace(on_policy_mask="ppo_clip", log_ratio_clamp=0.0)
    a, _ = project_loss(L.preset("chord_phi"), s, micro=100, extra={"step": 1})
    b, _ = project_loss(plain, s, micro=100, extra={"step": 1})
    assert not torch.allclose(a, b)
