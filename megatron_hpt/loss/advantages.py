"""Advantage estimators (SPEC §3, §4.1-4.2) and DAPO's reward shaping and group filter."""
from __future__ import annotations

import torch
import torch.distributed as dist

from .kl import kl_penalty

WHITEN_EPS = 1e-8  # REINFORCE++ whitening ε (verl masked_whiten)
#: The estimator registry: the names compute_advantages accepts (LossConfig.advantage_estimator's
#: choices); a new estimator is a branch in compute_advantages plus its name here.
ESTIMATORS = ("none", "grpo", "dr_grpo", "rloo", "reinforce", "reinforce_pp",
              "reinforce_pp_baseline")


def group_statistics(values, group_index, include):
    """Per-row mean, unbiased std and size of its group over rows with ``include``, all [B].

    values: [B] float; group_index: [B] int (any ids); include: [B] bool.
    A group of one has mean 0 and std 1 (SPEC §3, GRPO).
    """
    _, inverse = torch.unique(group_index, return_inverse=True)  # [B]
    k = int(inverse.max()) + 1 if inverse.numel() else 0
    w = include.to(values.dtype)
    zeros = torch.zeros(k, dtype=values.dtype, device=values.device)
    count = zeros.clone().index_add_(0, inverse, w)  # [G]
    total = zeros.clone().index_add_(0, inverse, values * w)
    mean = total / count.clamp(min=1)
    sq = zeros.clone().index_add_(0, inverse, (values - mean[inverse]) ** 2 * w)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    single = count <= 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    return mean[inverse], std[inverse], count[inverse]


def overlong_reward(lengths, max_response_length, buffer_len, penalty_factor=1.0):
    """DAPO overlong shaping R_len (SPEC §3), [B]: 0 if |y| ≤ L_max − L_cache,
    ((L_max − L_cache) − |y|)/L_cache inside the buffer, −1 beyond L_max; times the factor."""
    lengths = lengths.to(torch.float64)
    expected = max_response_length - buffer_len
    inside = (expected - lengths) / buffer_len
    r = torch.where(lengths <= expected, torch.zeros_like(lengths),
                    torch.where(lengths <= max_response_length, inside, -torch.ones_like(lengths)))
    return penalty_factor * r


def group_filter(rewards, group_index, eps=1e-12):
    """DAPO dynamic sampling (SPEC §3): keep rows of groups with 0 < #correct < G, i.e. whose
    rewards are not all equal. Returns keep [B] bool; the trainer drops the other groups and
    oversamples until the batch is full."""
    everyone = torch.ones_like(rewards, dtype=torch.bool)
    _, std, count = group_statistics(rewards.double(), group_index, everyone)
    return (count > 1) & (std > eps)


def _whiten(values, mask, group):
    """(x − mean)/sqrt(var + ε) over masked entries, var unbiased, all-reduced over ``group``."""
    m = mask.to(values.dtype)
    stats = torch.stack([(values * m).sum(), (values * values * m).sum(), m.sum()])
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(stats, group=group)
    s, ss, n = stats
    mean = s / n
    var = (ss - n * mean * mean) / (n - 1).clamp(min=1)
    return (values - mean) * torch.rsqrt(var + WHITEN_EPS) * m


def _token_returns(token_rewards, mask, gamma):
    """G_t = Σ_{k≥t} γ^{k−t} r_k over masked tokens, [B, T]."""
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        running = token_rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * mask[:, t]  # padding after the response does not leak back
    return returns * mask


def compute_advantages(rewards, group_index, cfg, **extras):
    """Advantages for ``cfg.advantage_estimator`` (SPEC §3): [B] or [B, T] (REINFORCE++).

    rewards: [B] outcome rewards; group_index: [B] prompt ids (rows of one prompt share an id).
    extras: is_demo [B] bool (demonstrations; part of the group statistics only with
    ``cfg.mixed_group``, else their advantage is 0); response_mask [B, T] (needed by
    REINFORCE++, DAPO overlong shaping and KL-in-reward); token_rewards [B, T] (added to the
    outcome reward placed at the last response token); ref_logprobs and old_logprobs [B, T]
    (KL in reward, ``cfg.kl_mode == 'reward'``); group (process group for REINFORCE++'s
    whitening over the global batch).

    grpo: (R − mean_G)/(std_G + ε); dr_grpo: R − mean_G; rloo: G/(G−1)·(R − mean_G);
    reinforce: R; reinforce_pp: whitened discounted returns of the token rewards;
    reinforce_pp_baseline: the same after subtracting the group mean of R; none: zeros.
    """
    allowed = {"is_demo", "response_mask", "token_rewards", "ref_logprobs", "old_logprobs", "group"}
    unknown = sorted(set(extras) - allowed)
    if unknown:
        raise ValueError(f"compute_advantages: unknown extras {unknown}; valid: {sorted(allowed)}")
    r = rewards.detach().to(torch.float64) if not rewards.is_floating_point() else rewards.detach()
    is_demo = extras.get("is_demo")
    is_demo = torch.zeros_like(r, dtype=torch.bool) if is_demo is None else is_demo.bool()
    mask = extras.get("response_mask")
    est = cfg.advantage_estimator

    needs_tokens = est.startswith("reinforce_pp") or cfg.overlong_buffer_len > 0 or (
        cfg.kl_mode == "reward" and cfg.kl_coef > 0)
    if needs_tokens and mask is None:
        raise ValueError(f"advantage_estimator={est!r} with overlong shaping / KL in reward "
                         "needs the response_mask extra")
    if cfg.overlong_buffer_len > 0:
        r = r + overlong_reward(mask.sum(-1), cfg.max_response_length,
                                cfg.overlong_buffer_len, cfg.overlong_penalty_factor).to(r.dtype)
    token_r = None
    kl_in_reward = cfg.kl_mode == "reward" and cfg.kl_coef > 0
    given = extras.get("token_rewards")
    if mask is not None and (est.startswith("reinforce_pp") or given is not None or kl_in_reward):
        m = mask.to(r.dtype)
        token_r = torch.zeros_like(m) if given is None else given.to(r.dtype) * m  # [B, T]
        if kl_in_reward:
            if extras.get("ref_logprobs") is None or extras.get("old_logprobs") is None:
                raise ValueError("kl_mode='reward' needs ref_logprobs and old_logprobs extras")
            kl = kl_penalty(extras["old_logprobs"].detach(), extras["ref_logprobs"], cfg.kl_estimator)
            token_r = token_r - cfg.kl_coef * kl.to(r.dtype) * m
        if not est.startswith("reinforce_pp"):  # group estimators score the summed reward
            r = r + token_r.sum(-1)

    include = torch.ones_like(is_demo) if cfg.mixed_group else ~is_demo

    def zero_demo(a):
        return a if cfg.mixed_group else torch.where(is_demo, torch.zeros_like(a), a)

    if est == "none":
        return torch.zeros_like(r)
    if est == "reinforce":
        return zero_demo(r)
    mean, std, count = group_statistics(r, group_index, include)
    if est == "grpo":
        return zero_demo((r - mean) / (std + cfg.advantage_eps))
    if est == "dr_grpo":
        return zero_demo(r - mean)
    if est == "rloo":
        factor = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.ones_like(count))
        return zero_demo(factor * (r - mean))
    # REINFORCE++: outcome reward at the last response token, discounted returns, whitening.
    m = mask.to(r.dtype)
    outcome = r - mean if est == "reinforce_pp_baseline" else r
    last = (m.cumsum(-1) == m.sum(-1, keepdim=True)) & (m > 0)  # [B, T]
    token_r = token_r + outcome[:, None] * last.to(r.dtype)
    valid = m * include[:, None].to(r.dtype)
    return _whiten(_token_returns(token_r, m, cfg.gamma), valid, extras.get("group"))
