"""Per-row seeded sampling: ``rollout.sampling.draw`` (one fp64 uniform per row generator, then
one inverse-CDF search for the batch) against one ``torch.multinomial`` call per row generator
(what it replaced), on the same probabilities, one run.

    python benchmarks/sampling.py                    # 64 rows, V = 80 (the CPU demo's rollouts)
    python benchmarks/sampling.py --rows 512 --vocab 32000

The trainer seeds every rollout row by its prompt (``SamplingParams.prompt_seeds``), so each
decoding step draws once per row from that row's generator. Reps alternate between the two so
that background load hits both alike; the median and best microseconds per call and their ratio
are printed with a markdown row for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from megatron_hpt.rollout import SamplingParams
from megatron_hpt.rollout.sampling import draw, row_generators


def per_row_multinomial(logits, generators):
    """The replaced draw: softmax, then one multinomial call per row generator."""
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.cat([torch.multinomial(probs[i:i + 1], 1, generator=g)[:, 0]
                      for i, g in enumerate(generators)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=80)
    parser.add_argument("--calls", type=int, default=200, help="draws per rep")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logits = torch.randn(args.rows, args.vocab, generator=torch.Generator().manual_seed(0)) * 3
    sampling = SamplingParams(temperature=1.0, max_new_tokens=1)
    seeds = tuple(range(0, args.rows, 4))
    variants = {"draw (inverse CDF)": lambda gens: draw(logits, sampling, gens),
                "multinomial per row": lambda gens: per_row_multinomial(logits, gens)}
    times = {name: [] for name in variants}
    for _ in range(args.reps):
        for name, fn in variants.items():
            gens = row_generators(seeds, 4)
            start = time.perf_counter()
            for _ in range(args.calls):
                fn(gens)
            times[name].append((time.perf_counter() - start) / args.calls * 1e6)
    new, old = times["draw (inverse CDF)"], times["multinomial per row"]
    for name, ts in times.items():
        print(f"{name:22s} median {statistics.median(ts):8.1f} us  best {min(ts):8.1f} us per call")
    ratio_med, ratio_best = statistics.median(old) / statistics.median(new), min(old) / min(new)
    print(f"speed-up (median / best): {ratio_med:.1f}x / {ratio_best:.1f}x")
    print(f"| {args.rows} x {args.vocab} | {statistics.median(new):.0f} / {min(new):.0f} | "
          f"{statistics.median(old):.0f} / {min(old):.0f} | {ratio_med:.1f}x / {ratio_best:.1f}x |")


if __name__ == "__main__":
    main()
