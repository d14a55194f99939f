#!/usr/bin/env python
"""Evaluate a policy on benchmarks: avg@k and pass@k (megatron_hpt/eval/evaluate.py).

    python tools/evaluate.py --load runs/cpu_demo/hpt --benchmark builtin:arithmetic \\
        --n-samples 8 --temperature 0.6 --top-p 0.95 --max-new-tokens 32
    python tools/evaluate.py --hf-model Qwen2.5-Math-7B --engine vllm \\
        --benchmark AIME24.json --benchmark MATH-500.json --n-samples 32 --max-new-tokens 8192
    torchrun --nproc-per-node 2 tools/evaluate.py --load CKPT --engine embedded ...   # TP = 2
"""
import argparse
import os
import sys


def main(argv=None) -> int:
    from megatron_hpt.rewards import REWARDS
    from megatron_hpt.rollout.engines import DEFAULT_ENGINE, ENGINES
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", default=None, help="Megatron checkpoint dir (training or converter output)")
    p.add_argument("--hf-model", default=None, help="Hugging Face model dir (weights unless --load; "
                                                     "tokenizer and chat template)")
    p.add_argument("--benchmark", action="append", required=True,
                   help="builtin:arithmetic, or a .json / .jsonl / .parquet file; repeatable")
    p.add_argument("--engine", default=DEFAULT_ENGINE, choices=tuple(ENGINES))
    p.add_argument("--n-samples", type=int, default=1, help="samples per problem (k of avg@k)")
    p.add_argument("--pass-k", default="1", help="comma-separated k for pass@k (k <= n-samples)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--train-seed", type=int, default=1234,
                   help="--seed of the training run: builtin:arithmetic then uses its held-out problems")
    p.add_argument("--reward-type", default=None, choices=tuple(REWARDS),
                   help="default: arithmetic for builtin:arithmetic, math (math-verify) for files")
    p.add_argument("--reward-fn", default=None, metavar="MODULE:FUNCTION",
                   help="your own grader (response, answer) -> float instead of --reward-type")
    p.add_argument("--reward-timeout", type=int, default=5,
                   help="seconds a grader may spend on one answer (a longer one scores 0)")
    p.add_argument("--prompt-format", default="auto", choices=("auto", "chat", "raw"),
                   help="auto: the tokenizer's chat template when it has one")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="weights and compute dtype of the engine; auto: bfloat16 on GPU, float32 on "
                        "CPU (vLLM: the checkpoint's, as vLLM decides). Give one value to compare "
                        "engines token for token")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    p.add_argument("--output", default=None, help="write metrics and per-sample correctness (JSON)")
    a = p.parse_args(argv)
    if not a.load and not a.hf_model:
        p.error("give --load CKPT and/or --hf-model DIR")
    if a.reward_fn and a.reward_type:
        p.error("give --reward-type or --reward-fn, not both")

    from megatron_hpt.data.records import DataError
    from megatron_hpt.eval import evaluate as ev
    from megatron_hpt.rewards import reward_fn
    from megatron_hpt.rollout import SamplingParams, build_engine
    from megatron_hpt.rollout.engines import engine_for_policy
    from megatron_hpt.training import distributed

    try:  # every input checked before any process group or model: one line, exit code 2
        tokenizer = ev.load_tokenizer_for(a.load, a.hf_model)
        chat = a.prompt_format == "chat" or (a.prompt_format == "auto" and bool(getattr(tokenizer, "chat_template", None)))
        builtin_tokenizer = not a.hf_model and not (a.load and os.path.isdir(os.path.join(a.load, "tokenizer")))
        benchmarks = {b: ev.benchmark_items(b, tokenizer, chat, a.limit, train_seed=a.train_seed,
                                            strict_chars=builtin_tokenizer)
                      for b in a.benchmark}
        positions = ev.model_positions(a.load, a.hf_model)
        for name, items in benchmarks.items():
            ev.check_prompt_lengths(name, items, positions)
    except (DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    longest = max(len(it.prompt_ids) for items in benchmarks.values() for it in items)
    if positions is not None and longest + a.max_new_tokens > positions:
        print(f"note: --max-new-tokens {a.max_new_tokens} capped at {positions - longest}: the "
              f"longest prompt is {longest} tokens and the model has {positions} positions",
              file=sys.stderr)
        a.max_new_tokens = positions - longest
    world = distributed.world_from_env()
    distributed.initialize(world.world_size, 1, seed=a.seed)
    try:
        own_weights = not ENGINES[a.engine].engine.shares_training_weights
        if own_weights and a.hf_model and not a.load:  # the engine reads the HF weights itself
            engine = build_engine(a.engine, hf_dir=a.hf_model, tensor_parallel_size=world.world_size,
                                  seed=a.seed, max_model_len=longest + a.max_new_tokens,
                                  dtype=a.dtype)
        else:
            model, shape = ev.build_megatron_policy(a.load, a.hf_model, world.world_size,
                                                        dtype=ev.torch_dtype(a.dtype))
            engine = engine_for_policy(
                a.engine, [model], shape, tokenizer, tensor_parallel_size=world.world_size,
                seed=a.seed, max_model_len=longest + a.max_new_tokens,
                params_dtype=next(model.parameters()).dtype, hf_dir=a.hf_model)
            if own_weights:  # fed the checkpoint's weights through the trainer's stream
                from megatron_hpt.rollout.weights import export_hf_weights
                engine.update_weights(export_hf_weights([model], shape, 512))
        sampling = SamplingParams(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k,
                                  max_new_tokens=a.max_new_tokens, seed=a.seed,
                                  eos_token_ids=(tokenizer.eos_token_id,))
        ks = [int(k) for k in a.pass_k.split(",") if k.strip()] + [a.n_samples]
        results = []
        for name, items in benchmarks.items():
            grade = reward_fn(a.reward_fn or a.reward_type or
                              ("arithmetic" if name == "builtin:arithmetic" else "math"),
                              a.reward_timeout)
            label = os.path.basename(name)
            results.append(ev.evaluate_items(engine, tokenizer, items, a.n_samples, sampling,
                                             grade, ks, label))
        if distributed.dist.get_rank() == 0:
            print(ev.format_table(results), flush=True)
            if a.output:
                ev.write_results(results, a.output)
    finally:
        distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
