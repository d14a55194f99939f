"""The colocation memory choreography (rollout/phases.py, training/colocation.py,
rollout/trainer_engine.py) on CPU.

- the phase state machine: the allowed cycles, every other move refused;
- the flags: defaults, what is refused, the auto default on CUDA;
- a real RL run (grpo + KL term, 2 steps) with a stand-in engine that keeps its own copy of the
  weights (``shares_training_weights = False``, like vLLM) and records every call together with
  whether the trainer's params and grad buffers were on the device at that moment: with
  --offload-train --offload-reference the calls come in exactly the choreography's order
  (params resident while the stream reads them, nothing resident while it generates, sleep at
  level 2, weights woken before the stream and the KV cache after it), and the losses, metrics
  and final weights are bitwise those of the same run without offload;
- the KL reference on the host between uses, its log-probs bitwise equal;
- ``VllmEngine.sleep/wake_up`` against a recording stand-in of ``vllm.LLM`` (vLLM's sleep mode
  does not exist on CPU), and the installed vLLM's ``LLM.sleep(level, ...)`` /
  ``LLM.wake_up(tags)`` signatures.
"""
import argparse
import ast
import importlib.util
import os
import re

import pytest
import torch

from dist_utils import run_distributed
from megatron_hpt.rollout.phases import PhaseError, PhaseMachine


# --------------------------------------------------------------------------- phase machine

def test_phase_machine_allows_the_cycles_and_refuses_the_rest():
    m = PhaseMachine()
    for phase in ("sync", "rollout", "training", "rollout", "training"):
        m.to(phase)
    assert m.history == ["training", "sync", "rollout", "training", "rollout", "training"]
    for start, bad in (("training", "training"), ("sync", "training"), ("sync", "sync"),
                       ("rollout", "sync"), ("rollout", "rollout")):
        m = PhaseMachine(start)
        with pytest.raises(PhaseError, match=f"phase {start} -> {bad} is not allowed"):
            m.to(bad)
        assert m.phase == start and m.history == [start]
    with pytest.raises(PhaseError, match="unknown phase 'eval'"):
        PhaseMachine().to("eval")
    with pytest.raises(PhaseError, match="needs phase rollout, but the step is in phase training"):
        PhaseMachine().require("rollout", "generate")


# --------------------------------------------------------------------------- flags

def _cfg(extra):
    from megatron_hpt.arguments import build_config, build_parser
    from training.common import TINY_MODEL
    return build_config(build_parser().parse_args(TINY_MODEL + ["--vocab-size", "64"] + extra), 1)


def test_flags_defaults_and_errors(monkeypatch):
    from megatron_hpt.arguments import ConfigError
    from megatron_hpt.training.colocation import colocation_config_from_args
    cfg = _cfg(["--loss-preset", "grpo", "--global-batch-size", "64"])
    assert not cfg.colocation.offload_train and not cfg.colocation.offload_reference  # CPU
    with pytest.raises(ConfigError, match="--offload-train: --rollout-engine embedded decodes"):
        _cfg(["--loss-preset", "grpo", "--global-batch-size", "64", "--offload-train"])
    with pytest.raises(ConfigError, match="--offload-train applies to RL runs"):
        _cfg(["--offload-train"])
    with pytest.raises(ConfigError, match=r"--rollout-gpu-memory-utilization 1.5 must be in \(0, 1\]"):
        _cfg(["--rollout-gpu-memory-utilization", "1.5"])
    cfg = _cfg(["--loss-preset", "grpo", "--global-batch-size", "64", "--offload-reference"])
    assert cfg.colocation.offload_reference and not cfg.colocation.offload_train
    # auto: on for an engine with its own weights on CUDA, off for the embedded engine or sft
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ns = dict(offload_train=None, offload_reference=None)
    got = colocation_config_from_args(argparse.Namespace(
        loss_preset="grpo", rollout_engine="vllm", **ns))
    assert got.offload_train and got.offload_reference
    for preset, engine in (("grpo", "embedded"), ("sft", "vllm")):
        got = colocation_config_from_args(argparse.Namespace(
            loss_preset=preset, rollout_engine=engine, **ns))
        assert not got.offload_train and not got.offload_reference
    got = colocation_config_from_args(argparse.Namespace(
        loss_preset="grpo", rollout_engine="vllm", offload_train=True, offload_reference=False))
    assert got.offload_train and not got.offload_reference


# --------------------------------------------------------------------------- a real RL run

class RecordingEngine:
    """A rollout engine with its own copy of the weights (as vLLM has): loads the weight stream
    into a private megatron model (HF -> megatron through the conversion tables) and decodes
    with the embedded engine on it. Records each call with (params on the device, grad buffers
    on the device) of the trainer at that moment. TP = PP = 1."""

    shares_training_weights = False
    events: list = []

    def __init__(self, training_chunks, shape, pad_token_id, max_model_len):
        from megatron_hpt.models.stage import build_model_stage
        from megatron_hpt.rollout.embedded import EmbeddedEngine
        self.training_chunks, self.shape = training_chunks, shape
        with torch.random.fork_rng():  # the copy's random init leaves the run's RNG alone
            self.model, _ = build_model_stage(shape, dict(transformer_impl="local"))
        self.decoder = EmbeddedEngine(self.model, pad_token_id, max_model_len)

    @classmethod
    def from_policy(cls, model_chunks, shape, tokenizer, *, max_model_len=None, **_unused):
        return cls(model_chunks, shape, tokenizer.pad_token_id or 0, max_model_len)

    def _resident(self):
        params = [p for c in self.training_chunks for p in c.parameters()]
        return (all(p.untyped_storage().nbytes() > 0 for p in params),
                all(p.main_grad.untyped_storage().nbytes() > 0 for p in params))

    def update_weights(self, stream):
        from megatron_hpt.rollout.weights import _local_entries
        self.events.append(("update_weights",) + self._resident())
        hf = {name: t.clone() for bucket in stream for name, t in bucket}
        with torch.no_grad():
            for layer, mapping, param in _local_entries(self.model, self.shape, None):
                param.copy_(mapping.to_megatron([hf[n] for n in mapping.hf_names(layer)], self.shape))

    def generate(self, prompt_token_ids, n, sampling):
        self.events.append(("generate",) + self._resident())
        return self.decoder.generate(prompt_token_ids, n, sampling)

    def sleep(self, level=1):
        self.events.append(("sleep", level) + self._resident())

    def wake_up(self, tags=None):
        self.events.append(("wake_up", tuple(tags) if tags else None) + self._resident())

    def shutdown(self):
        pass


def recorded_runs(*argvs):
    """Rank entry point: train.run for each argv in turn (one process: megatron imports once)
    with the recording engine registered; returns per run (metrics, final weights, the engine's
    events), then the KL reference's round trip (``reference_round_trip``)."""
    from megatron_hpt.rollout import engines
    from megatron_hpt.training import distributed
    from megatron_hpt.train import run
    engines.ENGINES["recording"] = engines.EngineSpec(RecordingEngine, "records the choreography")
    torch.set_num_threads(1)
    out = []
    for argv in argvs:
        RecordingEngine.events.clear()
        try:
            got = run(argv)
            weights = {k: v.detach().clone() for k, v in got["model"][0].state_dict().items()
                       if torch.is_tensor(v)}
            out.append((got["metrics"], weights, list(RecordingEngine.events)))
        finally:
            distributed.destroy()
    return out, reference_round_trip()


RUN = [
    "--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "128",
    "--num-attention-heads", "2", "--num-query-groups", "2", "--seq-length", "32",
    "--max-position-embeddings", "64", "--normalization", "RMSNorm", "--swiglu",
    "--position-embedding-type", "rope", "--disable-bias-linear",
    "--loss-preset", "luffy", "--loss-kl-coef", "0.1", "--rollout-batch-size", "2",
    "--n-samples-per-prompt", "3", "--micro-batch-size", "4", "--train-iters", "2",
    "--lr", "3e-3", "--seed", "5", "--log-interval", "1", "--rollout-engine", "recording",
]


def test_offloaded_run_follows_the_choreography_and_equals_the_resident_run():
    (runs, reference), = run_distributed(
        recorded_runs, 1, RUN + ["--no-offload-train", "--no-offload-reference"],
        RUN + ["--offload-train", "--offload-reference"])
    (plain, w_plain, ev_plain), (off, w_off, ev_off) = runs
    # bitwise: every logged number of every step (losses, KL to the reference, grad norm,
    # rewards, the old-log-prob gap) and every final weight
    assert len(off) == 2 and off == plain
    assert off[1]["kl_mean"] > 0 and off[0]["grad_norm"] > 0  # the policy moved, the KL saw it
    assert w_off.keys() == w_plain.keys()
    assert all(torch.equal(w_off[k], w_plain[k]) for k in w_off)
    # the order: the first phase finds the engine awake (fresh, placeholder weights); every
    # later one (the second step, then the final evaluation) wakes its weights, streams, wakes
    # its KV cache. (params, grads) resident: the stream reads the params with grads and
    # optimizer state on the host; nothing of the trainer is on the device while it generates
    first = [("update_weights", True, False), ("generate", False, False), ("sleep", 2, False, False)]
    later = [("wake_up", ("weights",), True, False), ("update_weights", True, False),
             ("wake_up", ("kv_cache",), False, False), ("generate", False, False),
             ("sleep", 2, False, False)]
    phases = 1 + len(off)  # one per step, plus the final evaluation
    assert ev_off == first + later * (phases - 1)
    # without offload: the same engine calls, the training state resident throughout
    strip = [e[:-2] for e in ev_off]
    assert [e[:-2] for e in ev_plain] == strip and all(e[-2:] == (True, True) for e in ev_plain)
    # the KL reference: on the host before and after its forward, on the device during it, and
    # its log-probs are bitwise the (identical) policy's
    is_host, released, equal, nbytes = reference
    assert is_host and released == [True, True, True] and equal and nbytes > 0


# --------------------------------------------------------------------------- the KL reference

def reference_round_trip():
    from megatron_hpt.arguments import build_config, build_parser
    from megatron_hpt.data.tokenizer import build_char_tokenizer
    from megatron_hpt.loss.batch import Batch
    from megatron_hpt.training import distributed
    from megatron_hpt.training.colocation import HostReference, reference_on_device
    from megatron_hpt.training.setup import build_model, build_reference_model
    from megatron_hpt.training.step import forward_logprobs
    from training.common import TINY_MODEL, TRAIN
    torch.set_num_threads(1)
    tok = build_char_tokenizer()
    argv = TINY_MODEL + TRAIN + ["--loss-preset", "grpo", "--loss-kl-coef", "0.1",
                                 "--global-batch-size", "64", "--offload-reference"]
    cfg = build_config(build_parser().parse_args(argv), 1, tokenizer_vocab_size=len(tok))
    distributed.initialize(seed=cfg.seed)
    try:  # (run by recorded_runs, in the same process)
        policy = build_model(cfg)
        ref = build_reference_model(cfg, policy)
        params = [p for c in ref for p in c.parameters()]
        released = [all(p.untyped_storage().nbytes() == 0 for p in params)]
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, cfg.shape.vocab_size, (2, cfg.seq_length), generator=g)
        mb = Batch(tokens=tokens, labels=tokens.roll(-1, 1), response_mask=torch.ones(2, cfg.seq_length),
                   position_ids=torch.arange(cfg.seq_length).expand(2, -1).contiguous())
        with reference_on_device(ref):
            released.append(all(p.untyped_storage().nbytes() > 0 for p in params))
            got = forward_logprobs(ref, [mb], cfg.seq_length)[0][0]
        released.append(all(p.untyped_storage().nbytes() == 0 for p in params))
        want = forward_logprobs(policy, [mb], cfg.seq_length)[0][0]  # same weights, on device
        return isinstance(ref, HostReference), released, torch.equal(got, want), ref.offloader.nbytes
    finally:
        distributed.destroy()


# --------------------------------------------------------------------------- vLLM's sleep mode

class _FakeLLM:
    def __init__(self):
        self.calls = []

    def sleep(self, level=1, mode="abort"):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tags))

    def collective_rpc(self, method, kwargs=None):
        if kwargs and "weights_iterator" in kwargs:
            list(kwargs["weights_iterator"])
        self.calls.append(("rpc", method if isinstance(method, str) else method.__name__))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


def test_vllm_engine_sleep_levels_and_tagged_wake_up():
    """The calls the engine makes into ``vllm.LLM`` on a GPU (forced here: on CPU they are
    no-ops), and that vLLM's own API has those parameters."""
    from megatron_hpt.rollout.vllm_engine import SLEEP_TAGS, VllmEngine
    engine = VllmEngine.__new__(VllmEngine)
    engine.llm, engine.on_gpu, engine._asleep, engine._awake = _FakeLLM(), True, False, set()
    engine.sleep(level=2)
    engine.sleep(level=2)  # already asleep: nothing
    engine.wake_up(tags=["weights"])
    engine.update_weights([[("w", torch.zeros(1))]])  # weights awake: no second wake-up
    engine.wake_up(tags=["kv_cache"])
    assert not engine._asleep
    engine.sleep(level=1)
    engine.update_weights([[("w", torch.zeros(1))]])  # wakes the weights itself
    engine.wake_up()  # only the KV cache is still asleep
    assert engine.llm.calls == [
        ("sleep", 2), ("wake_up", ["weights"]), ("rpc", "reload_weights"),
        ("rpc", "_retie_output_embeddings"), ("reset_prefix_cache",), ("wake_up", ["kv_cache"]),
        ("sleep", 1), ("wake_up", ["weights"]), ("rpc", "reload_weights"),
        ("rpc", "_retie_output_embeddings"), ("reset_prefix_cache",), ("wake_up", ["kv_cache"])]
    with pytest.raises(ValueError, match="sleep level 3"):
        engine.sleep(level=3)
    with pytest.raises(ValueError, match="wake_up tags"):
        engine.wake_up(tags=["scheduling"])
    # the installed vLLM's API, read from its source (importing vLLM takes ~30 s here)
    spec = importlib.util.find_spec("vllm")
    if spec is None:
        pytest.skip("vLLM is not installed")
    root = os.path.dirname(spec.origin)
    llm = _methods(os.path.join(root, "entrypoints", "llm.py"), "LLM")
    assert llm["sleep"][:2] == ["self", "level"] and llm["wake_up"] == ["self", "tags"]
    with open(os.path.join(root, "v1", "executor", "abstract.py")) as f:
        tags = re.search(r"SLEEP_TAGS = frozenset\(\(([^)]*)\)\)", f.read())
    assert tags and set(re.findall(r'"(\w+)"', tags.group(1))) == set(SLEEP_TAGS)


def _methods(path, cls):
    """{method: argument names} of class ``cls`` in the Python file ``path``."""
    with open(path) as f:
        tree = ast.parse(f.read())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return {f.name: [a.arg for a in f.args.args] for f in node.body if isinstance(f, ast.FunctionDef)}
