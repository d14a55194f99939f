"""Next-token sampling on full-vocabulary logits: temperature, top-k, top-p, greedy, stopping.

Pure tensor functions used by the embedded engine (and by tests as the reference of what the
vLLM engine must do). Logits here are already gathered over tensor-parallel ranks: [b, V].

Order (as in vLLM): logits / T -> log-probs reported (full vocabulary, before truncation) ->
top-k -> top-p -> renormalise -> draw. See ``protocol`` for why the reported log-probs are the
untruncated ones.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from megatron_hpt.rollout.protocol import SamplingParams


def scaled_logprobs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) in fp32 over the full vocabulary; T = 0 (greedy) reports T = 1.
    logits: [b, V] -> [b, V]."""
    t = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits.float() / t, dim=-1)


def truncate(logprobs: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set tokens outside the top-k, then outside the top-p nucleus, to -inf. [b, V] -> [b, V].

    top-k keeps every token at least as likely as the k-th (ties at the boundary stay);
    top-p keeps the smallest prefix of the descending order whose mass reaches top_p (computed on
    the top-k-renormalised distribution), and always keeps the most likely token."""
    out = logprobs
    if 0 < top_k < out.size(-1):
        kth = torch.topk(out, top_k, dim=-1).values[:, -1:]  # [b, 1]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_lp, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_lp, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # mass of strictly more likely tokens
        drop_sorted = mass_before >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def draw(logits: torch.Tensor, sampling: SamplingParams,
         generator: Union[None, torch.Generator, Sequence[torch.Generator]]
         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """One token per row and its reported log-prob. logits: [b, V] -> tokens [b] (int64),
    logprobs [b] (fp32). ``generator`` (a CPU generator, or one per row: then each row's draw
    depends only on its own generator) is advanced by one fp64 uniform per row per non-greedy
    call; the token is that uniform's inverse CDF (``inverse_cdf``)."""
    logprobs = scaled_logprobs(logits, sampling.temperature)
    if sampling.greedy:
        tokens = torch.argmax(logprobs, dim=-1)
    else:
        probs = torch.softmax(truncate(logprobs, sampling.top_k, sampling.top_p), dim=-1)
        if isinstance(generator, (list, tuple)):
            # one scalar per row generator: 6.4x faster than one multinomial call per row at
            # 64 rows x V = 80 (benchmarks/sampling.py)
            uniform = torch.stack([torch.rand((), generator=g, dtype=torch.float64)
                                   for g in generator])
        else:
            uniform = torch.rand(probs.size(0), generator=generator, dtype=torch.float64)
        tokens = inverse_cdf(probs, uniform.to(probs.device))
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The first token whose cumulative probability exceeds ``uniform`` x the row's total mass
    (fp64; a zero-probability token is never chosen). probs [b, V], uniform [b] in [0, 1) -> [b]."""
    cdf = torch.cumsum(probs.double(), dim=-1)
    total = cdf[:, -1]
    # below the total even where uniform x total rounds up to it: the last token with mass wins
    target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target[:, None], right=True).squeeze(-1)


def finish_reason(token: int, sampling: SamplingParams) -> Optional[str]:
    """``eos`` / ``stop`` when ``token`` ends a sample, None otherwise (``length`` is the caller's)."""
    if token in sampling.eos_token_ids:
        return "eos"
    if token in sampling.stop_token_ids:
        return "stop"
    return None


def row_generators(prompt_seeds: Sequence[int], n: int) -> List[torch.Generator]:
    """One CPU generator per row of a prompt-major batch: prompt i's sample j seeded
    ``prompt_seeds[i] + j`` (``SamplingParams.prompt_seeds``)."""
    return [make_generator(seed + j) for seed in prompt_seeds for j in range(n)]


def make_generator(seed: Optional[int]) -> torch.Generator:
    """A CPU generator: seeded when ``seed`` is given, else from fresh entropy (ranks then agree
    only because the engine broadcasts tokens)."""
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen
