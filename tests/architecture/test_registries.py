"""The registries are the seams: each is read everywhere from one place and agrees with what it
names (model families with the conversion tables and transformers' own models, engines with the
protocol and the trainer, rewards and loss parts with their functions and the CLI choices)."""
import inspect
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
import torch

from megatron_hpt.arguments import ConfigError, build_config, build_parser
from training.common import TINY_MODEL, TRAIN


def _choices(parser, flag):
    return next(a.choices for a in parser._actions if flag in a.option_strings)


# ------------------------------------------------------------------ model families
def _tiny_shape(model_type, tie):
    from megatron_hpt.models.hf_config import _FAMILY
    from megatron_hpt.models.shape import ModelShape
    return ModelShape(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                      num_query_groups=2, kv_channels=8, vocab_size=96, max_position_embeddings=64,
                      position_embedding_type="rope", rotary_base=10000.0, normalization="RMSNorm",
                      norm_epsilon=1e-6, swiglu=True, untie_embeddings_and_output_weights=not tie,
                      add_bias_linear=False, hf_model_type=model_type, **_FAMILY[model_type][1])


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral"])
def test_family_registry_agrees_with_hf_config_and_transformers(model_type):
    """One module per family feeds both tables; the conversion table names exactly the tensors of
    transformers' own model built from the HF config that hf_config writes for the family."""
    import transformers
    from megatron_hpt.conversion.registry import MAPPINGS, mapping_for
    from megatron_hpt.models.hf_config import (_FAMILY, SUPPORTED_MODEL_TYPES,
                                               hf_config_from_shape, shape_from_hf_config)
    assert tuple(SUPPORTED_MODEL_TYPES) == tuple(MAPPINGS) and set(_FAMILY) == set(MAPPINGS)
    arch = mapping_for(model_type)
    assert _FAMILY[model_type] == (arch.architecture, arch.shape_fields)
    for tie in (True, False):
        shape = _tiny_shape(model_type, tie)
        config = hf_config_from_shape(shape)
        assert config["architectures"] == [arch.architecture]
        assert shape_from_hf_config(config) == shape
        hf = getattr(transformers, arch.architecture)(
            transformers.AutoConfig.for_model(**config))
        state = {k: tuple(v.shape) for k, v in hf.state_dict().items()
                 if not k.endswith("rotary_emb.inv_freq")}
        if tie:
            state.pop("lm_head.weight", None)  # tied: the checkpoint holds the embedding only
        assert arch.hf_expected(shape) == state


# ------------------------------------------------------------------ rollout engines
def test_engine_registry_feeds_the_cli_and_satisfies_the_protocol():
    from megatron_hpt.rollout.engines import ENGINE_NAMES, ENGINES
    from megatron_hpt.rollout.protocol import RolloutEngine
    assert tuple(_choices(build_parser(), "--rollout-engine")) == ENGINE_NAMES
    for name, spec in ENGINES.items():
        members = [m for m in dir(RolloutEngine) if not m.startswith("_")]
        missing = [m for m in members + ["from_policy"] if not hasattr(spec.engine, m)]
        assert not missing, f"engine {name} lacks {missing}"
        assert isinstance(spec.engine.shares_training_weights, bool)


class _FakeEngine:
    """A registered engine that records what the trainer asks of it."""
    shares_training_weights = False
    log = []

    @classmethod
    def from_policy(cls, model_chunks, shape, tokenizer, **kwargs):
        cls.log.append(("from_policy", kwargs["max_model_len"], kwargs["hf_dir"]))
        return cls()

    def generate(self, prompt_token_ids, n, sampling):
        self.log.append(("generate", n))
        return []

    def update_weights(self, stream):
        self.log.append(("update_weights", [[name for name, _ in b] for b in stream]))

    def sleep(self, level=1):
        self.log.append(("sleep", level))

    def wake_up(self, tags=None):
        self.log.append(("wake_up", tags))

    def shutdown(self):
        self.log.append(("shutdown",))


@pytest.mark.parametrize("shares", [False, True])
def test_trainer_engine_reads_the_protocol_not_the_name(monkeypatch, shares):
    """A new engine is one class plus one registry entry: the trainer builds it with
    ``from_policy``, streams weights only when it does not share the training weights, and shuts
    it down."""
    import megatron_hpt.rollout.weights as weights
    from megatron_hpt.rollout import engines
    from megatron_hpt.rollout.protocol import SamplingParams
    from megatron_hpt.rollout.trainer_engine import TrainerEngine

    fake = type("Fake", (_FakeEngine,), dict(shares_training_weights=shares, log=[]))
    monkeypatch.setitem(engines.ENGINES, "fake", engines.EngineSpec(fake, "a test engine"))
    monkeypatch.setattr(weights, "export_hf_weights", lambda chunks, shape, mb: iter([[("w", torch.zeros(1))]]))
    cfg = SimpleNamespace(rollout=SimpleNamespace(engine="fake", weight_bucket_mb=1,
                                                    gpu_memory_utilization=0.5), shape=None,
                          parallel=SimpleNamespace(tensor_model_parallel_size=1), seed=0,
                          seq_length=31, params_dtype=torch.float32, hf_model=None)
    engine = TrainerEngine(cfg, [torch.nn.Linear(1, 1)], SimpleNamespace(pad_token_id=0))
    for _ in range(2):
        engine.generate([[1]], 2, SamplingParams())
        engine.weights_changed()
    engine.shutdown()
    # an engine with its own weights sleeps at level 2 and is re-streamed after waking its
    # weights; one on the training weights sleeps at level 1 and wakes whole
    if shares:
        first = [("generate", 2), ("sleep", 1)]
        second = [("wake_up", None)] + first
    else:
        first = [("update_weights", [["w"]]), ("generate", 2), ("sleep", 2)]
        second = [("wake_up", ["weights"]), first[0], ("wake_up", ["kv_cache"])] + first[1:]
    assert fake.log == [("from_policy", 32, None)] + first + second + [("shutdown",)]
    assert engine.phases.history == ["training"] + (["rollout", "training"] if shares else
                                                    ["sync", "rollout", "training"]) * 2


# ------------------------------------------------------------------ rewards
@pytest.fixture
def user_rewards(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        import time

        def contains(response, answer):
            return float(answer in response)

        def slow(response, answer):
            time.sleep(30)
            return 1.0

        def broken(response, answer):
            raise KeyError(answer)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards"
    sys.modules.pop("my_rewards", None)


def test_reward_registry_feeds_the_cli_and_grades():
    from megatron_hpt.rewards import REWARDS, reward_fn
    assert tuple(_choices(build_parser(), "--reward-type")) == tuple(REWARDS)
    assert reward_fn("arithmetic")("1+2=3#12", "12") == 1.0
    assert reward_fn("arithmetic")("1+2=3#13", "12") == 0.0
    assert reward_fn("math", 5)("so \\boxed{\\frac{1}{2}}", "0.5") == 1.0
    with pytest.raises(ValueError, match="--reward-fn module:function"):
        reward_fn("exact")


def test_user_reward_runs_under_the_timeout(user_rewards):
    from megatron_hpt.rewards import reward_fn
    assert reward_fn(f"{user_rewards}:contains")("it is 42.", "42") == 1.0
    assert reward_fn(f"{user_rewards}:contains")("it is 41.", "42") == 0.0
    slow = reward_fn(f"{user_rewards}:slow", timeout_s=1)
    start = time.monotonic()
    assert slow("x", "y") == 0.0 and time.monotonic() - start < 5 and slow.failures == 1
    broken = reward_fn(f"{user_rewards}:broken", 1)
    assert broken("x", "y") == 0.0 and broken.failures == 1
    for spec, fragment in (("nosuchmodule_xyz:f", "cannot import module 'nosuchmodule_xyz'"),
                           (f"{user_rewards}:missing", "has no 'missing'"),
                           ("no_colon", "expected module:function")):
        with pytest.raises(ValueError, match="--reward-fn") as e:
            reward_fn(spec + ":" if spec == "no_colon" else spec)
        assert fragment in str(e.value)


def test_reward_fn_flag_is_checked_before_the_run(user_rewards):
    def config(extra):
        return build_config(build_parser().parse_args(TINY_MODEL + TRAIN + extra), 1,
                            tokenizer_vocab_size=80)
    assert config(["--reward-fn", f"{user_rewards}:contains"]).reward_type == f"{user_rewards}:contains"
    with pytest.raises(ConfigError, match="has no 'nope'"):
        config(["--reward-fn", f"{user_rewards}:nope"])
    with pytest.raises(ConfigError, match="not both"):
        config(["--reward-fn", f"{user_rewards}:contains", "--reward-type", "math"])


def test_greedy_accuracy_is_the_evaluations_avg_at_1(user_rewards):
    """The trainer's held-out accuracy goes through eval.evaluate_items (one greedy sample per
    problem) and the run's reward, a user's grader here: half the answers are right."""
    from megatron_hpt.data.prompts import BUILTIN, HELD_OUT_SEED_OFFSET, PromptSource
    from megatron_hpt.data.tokenizer import build_char_tokenizer
    from megatron_hpt.rollout.protocol import RolloutSample
    from megatron_hpt.training.held_out import greedy_accuracy

    tok = build_char_tokenizer()
    cfg = build_config(build_parser().parse_args(
        TINY_MODEL + TRAIN + ["--reward-fn", f"{user_rewards}:contains"]), 1, len(tok))
    items = PromptSource(BUILTIN, tok, cfg.seed + HELD_OUT_SEED_OFFSET, held_out=True).items(0, 8)
    asked = []

    class Engine:
        def generate(self, prompts, n, sampling):
            asked.append((n, sampling.temperature, sampling.max_new_tokens))
            return [RolloutSample(i, tok.encode("#" + (it.answer if i % 2 else "x"),
                                                add_special_tokens=False), [], "eos", p)
                    for i, (it, p) in enumerate(zip(items, prompts))]

    assert greedy_accuracy(Engine(), cfg, tok, num_problems=8) == {"eval greedy accuracy": 0.5}
    longest = max(len(it.prompt_ids) for it in items)
    assert asked == [(1, 0.0, cfg.seq_length + 1 - longest)]


# ------------------------------------------------------------------ loss parts and estimators
def _call(fn, kind, **kw):
    """Call a part with every extra it accepts."""
    accepted = inspect.signature(fn).parameters
    return fn(kind=kind, **{k: v for k, v in kw.items() if k in accepted})


def test_loss_registries_are_what_the_functions_and_lossconfig_accept():
    from megatron_hpt.loss import LossConfig, compute_advantages, config, parts
    from megatron_hpt.loss import advantages as adv_module
    B, T = 4, 3
    lp, old = -torch.rand(B, T), -torch.rand(B, T)
    mask, adv = torch.ones(B, T), torch.tensor([1.0, -1.0, 0.5, 0.0])
    ent, rewards = torch.rand(B), torch.tensor([1.0, 0.0, 1.0, 0.0])
    registries = [
        (parts.REFERENCES, config.REFERENCES, "on_policy_reference", lambda k: _call(
            parts.reference_denominator, k, logprobs=lp, old_logprobs=old, response_mask=mask)),
        (parts.MASKS, config.MASKS, "on_policy_mask", lambda k: _call(
            parts.stabilization_mask, k, ratio=torch.exp(lp - old), advantages=adv[:, None].expand(B, T))),
        (parts.ADVANTAGE_SOURCES, config.ADVANTAGE_SOURCES, "on_policy_advantage", lambda k: _call(
            parts.advantage, k, advantages=adv, response_mask=mask, sequence_entropy=ent,
            rewards=rewards)),
        (parts.SHAPINGS, config.SHAPINGS, "on_policy_shaping", lambda k: _call(parts.shaping, k, x=lp.exp())),
        (parts.SFT_WEIGHTINGS, config.SFT_WEIGHTINGS, "sft_weighting", lambda k: _call(
            parts.sft_weight, k, logprobs=lp, sequence_entropy=ent)),
        (adv_module.ESTIMATORS, config.ESTIMATORS, "advantage_estimator", lambda k: compute_advantages(
            rewards, torch.tensor([0, 0, 1, 1]), LossConfig(advantage_estimator=k), response_mask=mask)),
    ]
    for registry, in_config, field, run in registries:
        assert in_config is registry, field
        for name in registry:
            assert torch.isfinite(torch.as_tensor(run(name)[0] if isinstance(run(name), tuple)
                                                  else run(name))).all(), (field, name)
            LossConfig(**{field: name})
        with pytest.raises(ValueError):
            run("not_registered")
        with pytest.raises(ValueError, match=f"LossConfig.{field}='not_registered'"):
            LossConfig(**{field: "not_registered"})
