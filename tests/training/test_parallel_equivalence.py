"""TP=2, PP=2 and DP=2 reproduce the one-process run (losses and final weights), and a checkpoint
saved at one layout resumes at another with the same next-iteration losses (gloo, CPU)."""
import pytest
import torch

from dist_utils import run_distributed
from training.common import TINY_MODEL, TRAIN, full_weights, layout, save_initial_weights, train

LAYOUTS = {"tp2": (2, 1, 2), "pp2": (1, 2, 2), "dp2": (1, 1, 2)}  # tp, pp, world size


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("init"))
    run_distributed(save_initial_weights, 1, root)
    return root


@pytest.fixture(scope="module")
def reference(init_ckpt, tmp_path_factory):
    """One process, 4 iterations, checkpoint saved at iteration 2 and at the end."""
    save = str(tmp_path_factory.mktemp("ref"))
    argv = TINY_MODEL + TRAIN + layout() + ["--train-iters", "4", "--load", init_ckpt, "--finetune",
                                          "--save", save, "--save-interval", "2"]
    (metrics,) = run_distributed(train, 1, argv)
    return metrics, save


def _losses(metrics):
    return torch.tensor([m["lm loss"] for m in metrics], dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_matches_single_process(name, init_ckpt, reference, tmp_path):
    tp, pp, world = LAYOUTS[name]
    ref_metrics, ref_save = reference
    argv = TINY_MODEL + TRAIN + layout(tp, pp) + ["--train-iters", "4", "--load", init_ckpt,
                                                  "--finetune", "--save", str(tmp_path)]
    metrics = run_distributed(train, world, argv)[-1]  # the last rank logs
    assert [m["iteration"] for m in metrics] == [1, 2, 3, 4]
    ref, got = _losses(ref_metrics), _losses(metrics)
    assert (ref[1:] < ref[0]).all(), f"the reference run does not learn: {ref.tolist()}"
    assert torch.allclose(got, ref, rtol=0, atol=1e-5), f"{name}: {got.tolist()} vs {ref.tolist()}"
    for key in ("grad_norm",):
        g = torch.tensor([m[key] for m in metrics]); r = torch.tensor([m[key] for m in ref_metrics])
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-6), f"{name} {key}: {g} vs {r}"
    (w_ref,) = run_distributed(full_weights, 1, ref_save)
    (w_got,) = run_distributed(full_weights, 1, str(tmp_path))
    assert w_ref.keys() == w_got.keys()
    for k in w_ref:
        diff = (w_ref[k] - w_got[k]).abs().max().item()
        assert diff <= 1e-5, f"{name}: final weight {k} differs by {diff}"


@pytest.mark.parametrize("name", ["tp2", "pp2"])
def test_checkpoint_from_tp1_resumes_at_other_layout(name, reference, tmp_path):
    """Iteration-2 checkpoint of the TP1 run (weights + optimizer + schedule) resumed at TP2/PP2
    gives the same losses for iterations 3 and 4 as the uninterrupted TP1 run."""
    tp, pp, world = LAYOUTS[name]
    ref_metrics, ref_save = reference
    resume = str(tmp_path / "resume")
    import shutil
    shutil.copytree(ref_save, resume)
    with open(f"{resume}/latest_checkpointed_iteration.txt", "w") as f:
        f.write("2")
    argv = TINY_MODEL + TRAIN + layout(tp, pp) + ["--train-iters", "4", "--load", resume]
    metrics = run_distributed(train, world, argv)[-1]
    assert [m["iteration"] for m in metrics] == [3, 4]
    assert torch.allclose(_losses(metrics), _losses(ref_metrics)[2:], rtol=0, atol=1e-5), \
        f"{name}: {[m['lm loss'] for m in metrics]} vs {[m['lm loss'] for m in ref_metrics[2:]]}"
