"""Plain PyTorch reference of every preset, written from SPEC.md with explicit loops.

It does not call megatron_hpt.loss. Inputs: lp [B, T] log-probs (leaf), old [B, T], R [B],
groups [B] (python ints), mask [B, T] 0/1, demo [B] bools, H [B, T] entropy (leaf).
"""
import math

import torch


def valid(mask, i):
    return [t for t in range(mask.shape[1]) if mask[i, t] > 0]


def group_rows(groups, rows):
    out = {}
    for i in rows:
        out.setdefault(groups[i], []).append(i)
    return out


def grpo_adv(R, groups, rows, eps=1e-6, std=True):
    """(R − mean)/(unbiased std + eps) within each group of ``rows``; group of one: mean 0, std 1."""
    A = {}
    for members in group_rows(groups, rows).values():
        vals = [float(R[i]) for i in members]
        n = len(vals)
        if n == 1:
            mean, sd = 0.0, 1.0
        else:
            mean = sum(vals) / n
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
        for i in members:
            A[i] = (float(R[i]) - mean) / (sd + eps) if std else float(R[i]) - mean
    return A


def rloo_adv(R, groups, rows):
    A = {}
    for members in group_rows(groups, rows).values():
        for i in members:
            others = [float(R[j]) for j in members if j != i]
            A[i] = float(R[i]) - (sum(others) / len(others) if others else 0.0)
    return A


def ppo(r, a, lo, hi):
    return torch.minimum(r * a, torch.clamp(r, 1 - lo, 1 + hi) * a)


def ppo_dual(r, a, lo=.2, hi=.2, c=3.0):
    """Trinity-RFT's PPO loss (minimised): max(−a·r, −a·clip(r)), then for a < 0 the dual
    clip min(·, −a·c)."""
    clipped = torch.maximum(-a * r, -a * torch.clamp(r, 1 - lo, 1 + hi))
    return torch.minimum(clipped, torch.as_tensor(-a * c, dtype=r.dtype)) if a < 0 else clipped


def token_mean(terms):
    return sum(terms) / len(terms) if terms else 0.0


def mean_entropy(H, mask, i):
    ts = valid(mask, i)
    return sum(float(H[i, t].detach()) for t in ts) / len(ts)


def seq_mean_token_mean(per_row):
    rows = [r for r in per_row if r]
    return sum(sum(r) / len(r) for r in rows) / len(rows)


def chord_mu(step, warmup, decay, peak, valley):
    if step < warmup:
        return peak * step / warmup
    if step - warmup >= decay:
        return valley
    return valley + (peak - valley) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / decay))


def reference(name, lp, old, R, groups, mask, demo, H, step=0, L_max=None, **kw):
    B, T = lp.shape
    on = [i for i in range(B) if not demo[i]]
    dm = [i for i in range(B) if demo[i]]
    allr = list(range(B))
    r = torch.exp(lp - old)
    p = torch.exp(lp)

    if name == "sft":
        return token_mean([-lp[i, t] for i in allr for t in valid(mask, i)])
    if name == "reinforce":
        return token_mean([-float(R[i]) * lp[i, t] for i in on for t in valid(mask, i)])
    if name == "grpo":
        A = grpo_adv(R, groups, on)
        return seq_mean_token_mean([[-ppo(r[i, t], A[i], .2, .2) for t in valid(mask, i)] for i in on])
    if name == "dr_grpo":
        A = grpo_adv(R, groups, on, std=False)
        total = sum(-ppo(r[i, t], A[i], .2, .2) for i in on for t in valid(mask, i))
        return total / (L_max * len(on))
    if name == "dapo":
        lmax, cache = kw["max_len"], kw["cache"]
        R2 = []
        for i in range(B):
            n = len(valid(mask, i))
            shaping = 0.0 if n <= lmax - cache else ((lmax - cache - n) / cache if n <= lmax else -1.0)
            R2.append(float(R[i]) + shaping)
        A = grpo_adv(R2, groups, on)
        return token_mean([-ppo(r[i, t], A[i], .2, .28) for i in on for t in valid(mask, i)])
    if name == "gspo":
        A = grpo_adv(R, groups, on)
        terms = []
        for i in on:
            ts = valid(mask, i)
            s = torch.exp(sum(lp[i, t] - old[i, t] for t in ts) / len(ts))
            terms.append(-torch.minimum(s * A[i], torch.clamp(s, 1 - 3e-4, 1 + 4e-4) * A[i]))
        return sum(terms) / len(terms)
    if name == "cispo":
        A = grpo_adv(R, groups, on)
        return token_mean([-torch.clamp(r[i, t], 0.0, 1.28).detach() * A[i] * lp[i, t]
                           for i in on for t in valid(mask, i)])
    if name == "rloo":
        A = rloo_adv(R, groups, on)
        return token_mean([-ppo(r[i, t], A[i], .2, .2) for i in on for t in valid(mask, i)])
    if name == "reinforce_pp":
        gamma = kw["gamma"]
        G = {}
        for i in on:
            ts = valid(mask, i)
            for t in ts:  # outcome reward at the last response token, discounted back
                G[i, t] = float(R[i]) * gamma ** (ts[-1] - t)
        vals = list(G.values())
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
        return token_mean([-ppo(r[i, t], (G[i, t] - mean) / math.sqrt(var + 1e-8), .2, .2)
                           for (i, t) in G])
    ent_mean = token_mean([H[i, t] for i in allr for t in valid(mask, i)])  # masked_mean(H)
    if name == "luffy":  # released: one micro-batch, Σ/L_max, entropy = masked_mean
        A = grpo_adv(R, groups, allr, std=False)  # mixed group, no std
        total = sum(-A[i] * r[i, t] for i in on for t in valid(mask, i))
        total = total + sum(-A[i] * p[i, t] / (p[i, t] + 0.1) for i in dm for t in valid(mask, i))
        return total / L_max - 0.001 * ent_mean
    if name in ("srft", "srft_paper"):
        paper = name == "srft_paper"
        A = grpo_adv(R, groups, allr, std=paper)  # over the augmented group
        rl = []
        for i in on:
            hbar = mean_entropy(H, mask, i)
            w = 0.1 * math.exp(hbar) if float(R[i]) == 1.0 else -1.0  # correctness, not sign(A)
            rl += [-w * lp[i, t] for t in valid(mask, i)]
        for i in dm:
            rl += [-A[i] * p[i, t] / (p[i, t] + 0.1) for t in valid(mask, i)]
        sft = [-0.5 * math.exp(-mean_entropy(H, mask, i)) * lp[i, t] for i in dm for t in valid(mask, i)]
        pg = token_mean(rl) if paper else sum(rl) / L_max
        return pg + token_mean(sft) - 0.001 * ent_mean
    if name in ("chord_mu", "chord_phi"):  # Trinity: dual clip c = 3, log-ratio clamp ±20
        A = grpo_adv(R, groups, on)
        rc = torch.exp(torch.clamp(lp - old, -20.0, 20.0))
        grpo_term = token_mean([ppo_dual(rc[i, t], A[i]) for i in on for t in valid(mask, i)])
        if name == "chord_mu":
            mu = chord_mu(step, 0, 200, 0.9, 0.05)
            sft = token_mean([-lp[i, t] for i in dm for t in valid(mask, i)])
        else:
            mu = 0.1
            sft = token_mean([-(p[i, t] * (1 - p[i, t])).detach() * lp[i, t] for i in dm for t in valid(mask, i)])
        return (1 - mu) * grpo_term + mu * sft
    if name == "hpt":  # released: one micro-batch here, Σ/L_max, no clip, no std
        A = grpo_adv(R, groups, on, std=False)
        rl = sum(-A[i] * r[i, t] for i in on for t in valid(mask, i)) / L_max
        sft = token_mean([-lp[i, t] for i in dm for t in valid(mask, i)])
        return rl + sft - 0.001 * ent_mean
    if name == "hpt_clean":
        A = grpo_adv(R, groups, on, std=False)
        rl = sum(-ppo(r[i, t], A[i], .2, .2) for i in on for t in valid(mask, i)) / (L_max * len(on))
        sft = token_mean([-lp[i, t] for i in dm for t in valid(mask, i)])
        return rl + sft - 0.001 * ent_mean
    if name == "egspo":
        A = grpo_adv(R, groups, on)
        hs = sorted(float(H[i, t].detach()) for i in on for t in valid(mask, i))
        pos = 0.8 * (len(hs) - 1)  # (1 − ρ)-quantile, linear interpolation
        lo_i = int(math.floor(pos))
        tau = hs[lo_i] + (hs[min(lo_i + 1, len(hs) - 1)] - hs[lo_i]) * (pos - lo_i)
        eg = []
        for i in on:
            for t in valid(mask, i):
                g = 1.0 if float(H[i, t].detach()) >= tau else 0.0
                a = float((p[i, t] * (1 - p[i, t])).detach())
                eg.append(-(g + (1 - g) * a) * ppo(r[i, t], A[i], .2, .2))
        sft = token_mean([-(p[i, t] * (1 - p[i, t])).detach() * lp[i, t] for i in dm for t in valid(mask, i)])
        return 0.9 * token_mean(eg) + 0.1 * sft
    raise KeyError(name)
