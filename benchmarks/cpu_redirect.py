"""Cost of the CPU platform's CUDA-literal redirect (platform.py, a TorchFunctionMode whose hook
runs on every torch call) in decoding, and what ``platform.model_compute()`` (which suspends it
around model forwards) saves; one run.

    python benchmarks/cpu_redirect.py            # the CPU demo's model and rollout batch

Decodes 16 prompts x 4 samples x 20 new tokens with the embedded engine on the demo's shape
(2 layers, hidden 64, vocab 80), per-prompt seeds, T = 1, alternating between the engine as it
is and the engine with ``model_compute`` replaced by a no-op (the mode then stays on through the
forward, as before). The draws are identical (same seeds), so both decode the same tokens.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "rollout"))


def main(reps: int = 9):
    torch.set_num_threads(1)
    import tiny_models as tm
    from megatron_hpt import platform
    from megatron_hpt.models import ModelShape
    from megatron_hpt.rollout import SamplingParams, build_engine
    from megatron_hpt.rollout.assignment import prompt_seed
    from megatron_hpt.training.distributed import initialize

    initialize(1, 1)
    shape = ModelShape(num_layers=2, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4,
                       num_query_groups=2, vocab_size=80, max_position_embeddings=64,
                       hf_model_type="llama")
    engine = build_engine("embedded", model=tm.megatron_model(seed=0, shape=shape))
    prompts = torch.randint(3, 80, (16, 6), generator=torch.Generator().manual_seed(0)).tolist()
    sampling = SamplingParams(temperature=1.0, max_new_tokens=20,
                              prompt_seeds=tuple(prompt_seed(1, i) for i in range(16)))
    suspend = platform.model_compute
    times = {"redirect suspended in forwards": [], "redirect on throughout": []}
    outputs = {}
    for _ in range(reps):
        for name in times:
            platform.model_compute = suspend if name.startswith("redirect suspended") else (
                contextlib.nullcontext)
            start = time.perf_counter()
            samples = engine.generate(prompts, 4, sampling)
            times[name].append(time.perf_counter() - start)
            outputs[name] = [s.response_token_ids for s in samples]
    platform.model_compute = suspend
    assert outputs["redirect suspended in forwards"] == outputs["redirect on throughout"]
    for name, ts in times.items():
        print(f"{name:32s} median {statistics.median(ts) * 1e3:6.1f} ms  best {min(ts) * 1e3:6.1f} ms")
    on, off = times["redirect on throughout"], times["redirect suspended in forwards"]
    print(f"decode time with the redirect on / suspended (median / best): "
          f"{statistics.median(on) / statistics.median(off):.2f} / {min(on) / min(off):.2f}")


if __name__ == "__main__":
    main()
