"""Rollout throughput: embedded engine vs vLLM on the same weights, batch and sampling, one run.

    python benchmarks/rollout.py                      # 64 samples, 2-layer hidden-128 model
    python benchmarks/rollout.py --hidden 512 --layers 4 --heads 8 --vocab 8192

Both engines run in this process on the same Llama-shaped model (the vLLM engine gets the
megatron weights through a Hugging Face directory), fp32, temperature 1, no stop tokens, so
both generate exactly batch x new-tokens tokens. Reps alternate between the engines so that
background load hits both alike; median and best-rep tokens/s and their ratios are printed, plus
a markdown row for benchmarks/RESULTS.md. vLLM start-up is reported separately and excluded from tokens/s.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "rollout"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2, help="head_dim = hidden / heads (vLLM CPU: >= 64)")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64, help="samples per generate call")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (batch / n prompts)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    import tiny_models as tm
    from megatron_hpt.models import ModelShape
    from megatron_hpt.rollout import SamplingParams, build_engine
    from megatron_hpt.training.distributed import initialize

    initialize(1, 1)
    shape = ModelShape(num_layers=args.layers, hidden_size=args.hidden, ffn_hidden_size=4 * args.hidden,
                       num_attention_heads=args.heads, num_query_groups=args.heads,
                       vocab_size=args.vocab, max_position_embeddings=512, hf_model_type="llama")
    model = tm.megatron_model(seed=0, shape=shape)
    engines = {"embedded": build_engine("embedded", model=model)}
    with tempfile.TemporaryDirectory() as hf_dir:
        tm.save_hf_dir(hf_dir, tm.megatron_to_hf(model, shape), shape)
        start = time.perf_counter()
        engines["vllm"] = build_engine("vllm", hf_dir=hf_dir, max_model_len=512, dtype="float32",
                                       enforce_eager=True, seed=0)
        vllm_start = time.perf_counter() - start

    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, args.vocab, (args.batch // args.n, args.prompt_len), generator=gen).tolist()
    sampling = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens, seed=1)
    seconds = {name: [] for name in engines}
    for rep in range(args.reps + 1):  # rep 0 warms both up and is not counted
        for name, engine in engines.items():
            start = time.perf_counter()
            samples = engine.generate(prompts, args.n, sampling)
            elapsed = time.perf_counter() - start
            tokens = sum(len(s.response_token_ids) for s in samples)
            assert tokens == args.batch * args.new_tokens, (name, tokens)
            if rep:
                seconds[name].append(elapsed)
    tokens = args.batch * args.new_tokens
    # the machine is shared: the median shows typical load, the best rep the engine itself
    median = {name: tokens / statistics.median(s) for name, s in seconds.items()}
    best = {name: tokens / min(s) for name, s in seconds.items()}
    for name in engines:
        print(f"{name:9s} median {median[name]:7.0f} tokens/s  best {best[name]:7.0f} tokens/s  "
              f"(reps s: {', '.join(f'{s:.3f}' for s in seconds[name])})")
    ratio_median = median["embedded"] / median["vllm"]
    ratio_best = best["embedded"] / best["vllm"]
    print(f"vLLM start-up {vllm_start:.1f} s; embedded / vLLM tokens/s: median {ratio_median:.2f}, "
          f"best {ratio_best:.2f}")
    model_desc = f"{args.layers}L h{args.hidden} heads{args.heads} V{args.vocab}"
    print(f"| 2026-11-22 | 2-core CPU | {model_desc} | {args.batch} ({args.batch // args.n}x{args.n}) | "
          f"{args.prompt_len}+{args.new_tokens} | {median['embedded']:.0f} / {best['embedded']:.0f} | "
          f"{median['vllm']:.0f} / {best['vllm']:.0f} | {ratio_median:.2f} / {ratio_best:.2f} | "
          f"{vllm_start:.0f} s |")

if __name__ == "__main__":
    main()
