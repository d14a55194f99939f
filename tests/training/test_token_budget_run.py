"""End to end through ``train.run`` (rollouts, rewards, gate, advantages, normalizers): a token
budget regroups a rollout batch's rows into micro-batches of their own shapes and leaves every
step's loss and gradient norm as with fixed micro-batches (hpt_clean: globally normalized); the
second run also grades in a worker process (--reward-workers 1), which gives the same rewards."""
import pytest

from dist_utils import run_distributed
from training.common import train
from training.test_rl_task import HPT_RUN


def _run(extra):
    args = list(HPT_RUN)
    args[args.index("hpt")] = "hpt_clean"
    return args + ["--rollout-temperature", "0", "--train-iters", "2"] + extra


def test_token_budget_run_equals_fixed_micro_batches():
    ref = run_distributed(train, 1, _run([]))[0]
    got = run_distributed(train, 1, _run(["--max-tokens-per-micro-batch", "32",
                                          "--reward-workers", "1"]))[0]
    for key in ("lm loss", "grad_norm", "reward", "response length"):
        assert [m[key] for m in got] == pytest.approx([m[key] for m in ref], rel=1e-5, abs=1e-6), key
    assert ref[1]["grad_norm"] > 0
    assert got[0]["reward timeouts"] == got[0]["reward failures"] == 0.0
    # the untrained greedy policy solves nothing: the gate sends every prompt to SFT and keeps
    # its one demonstration row (hybrid/gate_rows.py): 4 rows, one micro-batch of 4
    assert [m["micro batches"] for m in ref] == [1.0, 1.0]
    assert all(m["micro batches"] > 1 for m in got), [m["micro batches"] for m in got]
