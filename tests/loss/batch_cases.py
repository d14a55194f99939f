"""A ragged float64 batch for every preset (loss/batch.py ``Batch``), shared by the CP and
fp32 tests: rows of 5 groups with demonstrations, ragged response masks that start after a
prompt, old/ref log-probs and π_old entropies, HPT row weights, advantages per preset."""
import torch

import megatron_hpt.loss as L
from megatron_hpt.loss.batch import Batch

GROUPS = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 3, 4, 4, 4]
DEMO = [0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]
REWARDS = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0]
OVERRIDES = {"dapo": dict(max_response_length=16, overlong_buffer_len=5),
             "reinforce_pp": dict(gamma=0.9)}
T = 24  # a multiple of 2·CP for CP = 2 and 3


def config(name, **extra):
    return L.preset(name).replace(**dict(OVERRIDES.get(name, {}), **extra))


def make_case(name, seed=0, cfg=None):
    """(cfg, batch, logprobs [B, T] leaf, entropy [B, T] leaf). Response tokens start anywhere
    in the row, so CP shards hold some rows' responses partly, wholly or not at all."""
    cfg = cfg or config(name)
    g = torch.Generator().manual_seed(seed)
    b = len(GROUPS)
    start = torch.randint(0, T - 2, (b,), generator=g)
    length = torch.randint(1, T, (b,), generator=g)
    pos = torch.arange(T)
    mask = ((pos >= start[:, None]) & (pos < (start + length).clamp(max=T)[:, None])).double()
    lp = torch.log(torch.rand(b, T, generator=g, dtype=torch.float64) * 0.9 + 0.05)
    old = lp + 0.2 * torch.randn(b, T, generator=g, dtype=torch.float64)
    ref = lp + 0.3 * torch.randn(b, T, generator=g, dtype=torch.float64)
    h = torch.rand(b, T, generator=g, dtype=torch.float64) * 2.0
    is_demo = torch.tensor(DEMO).bool()
    batch = Batch(tokens=torch.randint(0, 50, (b, T), generator=g),
                  labels=torch.randint(0, 50, (b, T), generator=g),
                  position_ids=pos.expand(b, T).contiguous(), response_mask=mask,
                  is_demo=is_demo, old_logprobs=old * mask, ref_logprobs=ref,
                  old_entropy=h, mu=0.3 if cfg.mu_schedule != "none" else None)
    if name.startswith("hpt"):
        batch.on_policy_weight = torch.rand(b, generator=g, dtype=torch.float64)
        batch.sft_weight = torch.rand(b, generator=g, dtype=torch.float64) * is_demo
        batch.demo_rl_weight = torch.rand(b, generator=g, dtype=torch.float64) * is_demo
    batch.advantages = L.compute_advantages(
        torch.tensor(REWARDS, dtype=torch.float64), torch.tensor(GROUPS), cfg, is_demo=is_demo,
        response_mask=mask)
    logprobs = lp.clone().requires_grad_()
    entropy = (h + 0.1 * torch.randn(b, T, generator=g, dtype=torch.float64)).requires_grad_()
    return cfg, batch, logprobs, entropy
