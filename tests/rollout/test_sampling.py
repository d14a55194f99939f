"""Sampling semantics of the embedded engine on a model whose next-token distribution the test sets.

The GPTModel is wired by hand so that its logits are the same vector ``LOGITS`` at every position
whatever the context: attention and MLP outputs are zeroed (the residual stream is the token
embedding), every embedding row is the all-ones vector (RMSNorm keeps it), and output row v is
``LOGITS[v] / hidden``. Expected frequencies are then exact, and 4096 draws per setting give a
standard error <= 0.008 per token; the tolerance 0.035 (> 4 standard errors) cannot be met by a
wrong temperature, a wrong truncation or a shifted nucleus, which all move some probability by
> 0.1 here.
"""
import math

import pytest
import torch

import tiny_models as tm
from megatron_hpt.rollout import SamplingParams
from megatron_hpt.rollout.embedded import EmbeddedEngine
from megatron_hpt.rollout.sampling import inverse_cdf, row_generators, truncate
from megatron_hpt.training.distributed import initialize

PROBS = {10: 0.40, 11: 0.25, 12: 0.15, 13: 0.10, 14: 0.06, 15: 0.04}
LOGITS = torch.full((tm.SHAPE.vocab_size,), -30.0)
for _token, _p in PROBS.items():
    LOGITS[_token] = math.log(_p)
ROWS, STEPS, TOL = 512, 8, 0.035


@pytest.fixture(scope="module")
def engine():
    initialize(1, 1)
    model = tm.megatron_model(seed=0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
                param.zero_()
            elif name == "embedding.word_embeddings.weight":
                param.fill_(1.0)
            elif name == "output_layer.weight":
                param.copy_((LOGITS / tm.SHAPE.hidden_size)[:, None].expand_as(param))
    return EmbeddedEngine(model)


def expected(temperature=1.0, keep=None):
    p = torch.softmax(LOGITS / temperature, -1)
    if keep is not None:
        mask = torch.zeros_like(p, dtype=torch.bool)
        mask[list(keep)] = True
        p = torch.where(mask, p, 0.0) / p[list(keep)].sum()
    return p


def frequencies(samples):
    tokens = torch.tensor([t for s in samples for t in s.response_token_ids])
    return torch.bincount(tokens, minlength=tm.SHAPE.vocab_size).float() / len(tokens), tokens


def run(engine, **kw):
    return engine.generate([[1, 2, 3]] * (ROWS // 8), 8, SamplingParams(max_new_tokens=STEPS, **kw))


def reported_logprobs_are_untruncated(samples, temperature):
    full = torch.log_softmax(LOGITS / temperature, -1)
    for s in samples:
        assert torch.allclose(torch.tensor(s.logprobs), full[s.response_token_ids], atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_temperature_frequencies(engine, temperature):
    samples = run(engine, temperature=temperature, seed=1)
    freq, _ = frequencies(samples)
    assert (freq - expected(temperature)).abs().max() < TOL
    reported_logprobs_are_untruncated(samples, temperature)


def test_top_k_never_emits_excluded_tokens(engine):
    samples = run(engine, temperature=1.0, top_k=3, seed=2)
    freq, tokens = frequencies(samples)
    assert set(tokens.tolist()) == {10, 11, 12}
    assert (freq - expected(keep=(10, 11, 12))).abs().max() < TOL  # 0.5 / 0.3125 / 0.1875
    reported_logprobs_are_untruncated(samples, 1.0)  # log 0.40, not log 0.50, for token 10


def test_top_p_keeps_the_smallest_nucleus(engine):
    # mass before 10, 11, 12 = 0, 0.40, 0.65: top_p = 0.6 keeps {10, 11}, 0.7 keeps {10, 11, 12}
    for top_p, keep in ((0.6, (10, 11)), (0.7, (10, 11, 12))):
        samples = run(engine, temperature=1.0, top_p=top_p, seed=3)
        freq, tokens = frequencies(samples)
        assert set(tokens.tolist()) == set(keep)
        assert (freq - expected(keep=keep)).abs().max() < TOL
        reported_logprobs_are_untruncated(samples, 1.0)


def test_top_k_then_top_p_at_temperature(engine):
    # T = 2: p ~ sqrt(PROBS); top-k 4 renormalises to (.32, .25, .19, .16); top-p 0.5 keeps {10, 11}
    samples = run(engine, temperature=2.0, top_k=4, top_p=0.5, seed=4)
    freq, tokens = frequencies(samples)
    assert set(tokens.tolist()) == {10, 11}
    assert (freq - expected(2.0, keep=(10, 11))).abs().max() < TOL
    reported_logprobs_are_untruncated(samples, 2.0)


def test_greedy_is_deterministic_and_seed_reproduces(engine):
    greedy = run(engine, temperature=0.0)
    assert all(s.response_token_ids == [10] * STEPS for s in greedy)
    assert all(abs(lp - math.log(0.4)) < 1e-5 for s in greedy for lp in s.logprobs)
    a, b, c = (run(engine, temperature=1.0, seed=seed) for seed in (9, 9, 10))
    assert [s.response_token_ids for s in a] == [s.response_token_ids for s in b]
    assert [s.response_token_ids for s in a] != [s.response_token_ids for s in c]


def test_eos_stop_and_length(engine):
    samples = run(engine, temperature=1.0, seed=5, eos_token_ids=(11,), stop_token_ids=(12,))
    counts = {"eos": 0, "stop": 0, "length": 0}
    for s in samples:
        counts[s.finish_reason] += 1
        body, last = s.response_token_ids[:-1], s.response_token_ids[-1]
        assert not set(body) & {11, 12}  # nothing after the first eos/stop token
        assert len(s.logprobs) == len(s.response_token_ids) <= STEPS
        if s.finish_reason == "length":
            assert len(s.response_token_ids) == STEPS and last not in (11, 12)
        else:
            assert last == {"eos": 11, "stop": 12}[s.finish_reason]
    # per step: eos 0.25, stop 0.15, continue 0.60; P(length) = 0.6^8 = 0.0168
    n = len(samples)
    ends = 1 - 0.6 ** STEPS
    assert abs(counts["eos"] / n - ends * 0.25 / 0.40) < TOL
    assert abs(counts["stop"] / n - ends * 0.15 / 0.40) < TOL
    assert abs(counts["length"] / n - 0.6 ** STEPS) < TOL


def test_truncate_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    logprobs = torch.log_softmax(torch.randn(64, 50, generator=gen) * 2, -1)
    for top_k, top_p in ((5, 1.0), (0, 0.3), (0, 0.9), (7, 0.5), (50, 0.999)):
        out = truncate(logprobs, top_k, top_p)
        for row, kept in zip(logprobs, torch.isfinite(out)):
            order = torch.argsort(row, descending=True).tolist()
            allowed = order[:top_k] if top_k else order
            p = torch.softmax(row[allowed], -1).tolist()
            keep, mass = [], 0.0
            for token, q in zip(allowed, p):
                if mass >= top_p and keep:
                    break
                keep.append(token)
                mass += q
            assert sorted(torch.nonzero(kept).flatten().tolist()) == sorted(keep)


def test_per_row_generators_frequencies(engine):
    """The trainer's path (``prompt_seeds``: one generator per row) draws the same distribution
    (top-k 4 at T = 2, so truncation and temperature both matter)."""
    seeds = tuple(range(1000, 1000 + ROWS // 8))
    samples = engine.generate([[1, 2, 3]] * len(seeds), 8, SamplingParams(
        temperature=2.0, top_k=4, max_new_tokens=STEPS, seed=1, prompt_seeds=seeds))
    freq, _ = frequencies(samples)
    assert (freq - expected(2.0, keep=(10, 11, 12, 13))).abs().max() < TOL


def test_inverse_cdf_against_a_plain_scan():
    """Token = the first whose running sum exceeds u x total, written as a loop; rows with
    zero-mass tokens (first, inside, last) and uniforms at 0 and at the top of [0, 1)."""
    gen = torch.Generator().manual_seed(3)
    probs = torch.rand(40, 9, generator=gen)
    probs[probs < 0.4] = 0.0
    probs[:, 0] = probs[:, -1] = 0.0
    probs[:, 4] += 0.01  # every row has mass
    probs = probs / probs.sum(-1, keepdim=True)
    uniform = torch.rand(40, generator=gen, dtype=torch.float64)
    uniform[0], uniform[1] = 0.0, 1.0 - 2.0 ** -53
    tokens = inverse_cdf(probs, uniform).tolist()
    for row, u, token in zip(probs.double().tolist(), uniform.tolist(), tokens):
        target, running, want = u * sum(row), 0.0, None
        for v, q in enumerate(row):
            running += q
            if q > 0:
                want = v  # the last token with mass, unless an earlier one already exceeds
                if running > target:
                    break
        assert token == want and row[token] > 0


def test_row_generator_draws_depend_on_their_own_seed_only():
    """Row i's token comes from its own generator's first uniform: recomputed from a fresh
    generator with the same seed, whatever the other rows are."""
    from megatron_hpt.rollout.sampling import draw
    logits = torch.randn(6, 20, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0, max_new_tokens=1)
    tokens, _ = draw(logits, params, row_generators((7, 50), 3))
    probs = torch.softmax(logits, -1)
    for i, seed in enumerate((7, 8, 9, 50, 51, 52)):
        u = torch.rand((), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert tokens[i] == inverse_cdf(probs[i:i + 1], u.reshape(1))[0]
