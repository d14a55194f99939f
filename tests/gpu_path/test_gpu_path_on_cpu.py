"""The GPU path checked on CPU (device_check.py): with the accelerator a device distinct from the
CPU, the project's real code runs on 2 gloo ranks without mixing devices and with every
collective on accelerator tensors:

- ``train.run`` SFT step at DP2 (model build and move, batch move, loss head, normalizer
  counts, metric reduction, megatron's optimizer) and its final greedy evaluation;
- ``train.run`` RL step with the hpt preset and the embedded engine (rollouts, rewards, gate,
  rows moved once, advantages, normalizers, old log-probs recomputed, rollout statistics);
- weight export at TP2 and at PP2 (TP all_gather, PP broadcast buffers);
- and the check has teeth: with ``Batch.to`` made a no-op the SFT step fails at once (the
  normalizer counts of the CPU batch reach an all-reduce: NCCL would refuse them).
"""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fake_cuda  # noqa: E402
from dist_utils import run_distributed  # noqa: E402


@pytest.fixture(scope="module")
def guard_library():
    if not any(os.access(os.path.join(d, "g++"), os.X_OK)
               for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip("the device check builds a small C++ library: needs g++")
    return fake_cuda.build()


def test_real_code_paths_keep_devices_apart(guard_library):
    import gpu_path_runs
    results = run_distributed(gpu_path_runs.real_code_paths, 2, guard_library, timeout=600)
    for r in results:
        assert r["sft model on accelerator"]
        assert r["sft loss"] == pytest.approx(results[0]["sft loss"]) and r["sft loss"] > 0
        assert r["rl loss"] == r["rl loss"]  # finite, computed
        # π_old recomputed by the same weights that sampled: the gap is fp32 round-off
        assert r["rl logprob gap"] is not None and r["rl logprob gap"] < 1e-4
        for layout in ("export tp2", "export pp2"):
            devices = {d for _, d in r[layout].values()}
            assert len(r[layout]) == 21 and devices == {"meta"}, (layout, devices)
        assert r["collectives"] > 50
        # the first thing to meet the CPU batch at DP2 is the all-reduce of the normalizer
        # counts (at DP1 it is the embedding: "aten::embedding: expected all tensors ...")
        assert r["without batch move"].startswith("c10d::allreduce_: collective on CPU tensors "
                                                  "[(7,)] (dtype torch.float64)"), r["without batch move"]
