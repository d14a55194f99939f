"""Rollout parallelism decoupled from training, end to end through `train.run`
(rollout/assignment.py, rollout/spread.py):

- embedded engine, DP=2, *sampled* rollouts (T = 1): one seed per batch and one per prompt
  derived from it, so each replica's samples are the one-process samples and the step equals
  the one-process step;
- colocated vLLM (vllm-cpu) at PP=2 with rollout TP 1: each pipeline stage runs its own engine on
  half of the prompts (none generated twice), the samples reach both stages, and the losses,
  rewards and response lengths equal the one-process run (greedy; the reference is the embedded
  engine in one process, whose greedy tokens vLLM's equal, tests/rollout/test_vllm_tp2.py).
  Two vLLM start-ups on 2 cores: ~1 min on an idle machine; ROLLOUT_SKIP_VLLM_SPREAD=1 skips it.
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
    rank = int(os.environ["RANK"])
    return rank, train(argv), log


@pytest.mark.skipif(bool(os.environ.get("ROLLOUT_SKIP_VLLM_SPREAD")),
                    reason="ROLLOUT_SKIP_VLLM_SPREAD is set")
def test_vllm_pp2_stages_generate_halves_and_match_one_process():
    pytest.importorskip("vllm")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    greedy = HPT_RUN + ["--rollout-temperature", "0", "--hpt-mode", "off"]
    ref = run_distributed(train, 1, greedy)[0]
    got = run_distributed(_train_logging_vllm_prompts, 2,
                          greedy + ["--rollout-engine", "vllm", "--pipeline-model-parallel-size",
                                    "2", "--rollout-tensor-parallel-size", "1"], timeout=540)
    (_, _, log0), (_, metrics, log1) = got
    # 2 iterations x 4 prompts: each stage's engine got 2 distinct prompts per rollout batch
    # (the 4 prompts of the step split in halves), none generated twice; the last call is the
    # final held-out evaluation (greedy_accuracy: every engine decodes the same problems)
    assert [len(call) for call in log0[:2]] == [2, 2] == [len(call) for call in log1[:2]]
    for step in range(2):
        both = log0[step] + log1[step]
        assert len({tuple(p) for p in both}) == 4
    for key in ("response length", "reward", "truncated"):
        assert [m[key] for m in metrics] == pytest.approx([m[key] for m in ref], rel=1e-6), key
    assert _losses(metrics) == pytest.approx(_losses(ref), rel=1e-4, abs=1e-5)
