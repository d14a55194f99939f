"""SPEC §6 at model level: one optimizer step's gradient is the same for 1, 2 and 4 micro-batches,
for token-budget micro-batches (``t<N>``: rows grouped by length, each micro-batch cut to its
longest row, training/packing.py) and for TP=1, TP=2 and DP=2, for grpo, hpt_clean, egspo and
luffy's global reading (``luffy@global``: Σ/(L_max·sequences), entropy token-mean); the faithful
`hpt` and `luffy` presets keep the released per-micro-batch means, so their gradients change
with the split. Old log-probs taken from the training forward
(``LossHead.old_from_forward``) give the gradient of a recompute pass.

The gradient is read back as the weight change of one SGD step with lr 1000 (no momentum state,
no clipping, no weight decay), loaded from each run's checkpoint at TP=1. All runs of one layout
share one process start-up (the tests are CPU-bound on CI)."""
import os

import pytest

from dist_utils import run_distributed
from training.common import TINY_MODEL, layout, many_full_weights, rl_steps, save_initial_weights

SGD = ["--optimizer", "sgd", "--lr", "1000", "--clip-grad", "0", "--weight-decay", "0",
       "--global-batch-size", "8", "--seed", "7", "--micro-batch-size", "2"]
INVARIANT = ["grpo", "hpt_clean", "luffy@global", "egspo"]
#: released per-micro-batch presets: one step at 1 and at 4 micro-batches
PER_MICRO_BATCH = ["hpt", "luffy"]
LAYOUTS = {"tp1": (1, 1, 1), "tp2": (2, 1, 2), "dp2": (1, 1, 2), "pp2": (1, 2, 2)}  # (tp, pp, world)
# (layout, micro-batch size) per run; at DP=2 each rank holds 4 rows, so mb 2 is a 2-way split
# token budgets: "t64" puts the 8 rows (7..32 tokens) into 4 micro-batches of mixed shapes
RUNS = [("tp1", 8), ("tp1", 4), ("tp1", 2), ("tp1", "t64"), ("tp2", 2), ("tp2", "t64"),
        ("dp2", 2), ("dp2", "t40"), ("pp2", "t64")]  # PP: stages exchange each shape
#: π_old = current policy: recompute pass vs detached training forward (same budget layout)
OLD_FROM_FORWARD = ["grpo", "luffy@global"]


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """{(preset, layout, mbs): (loss, gradient)} for every run, plus the hpt runs."""
    root = str(tmp_path_factory.mktemp("layout"))
    init = os.path.join(root, "init")
    run_distributed(save_initial_weights, 1, init)
    jobs = {}
    for name, (tp, pp, world) in LAYOUTS.items():
        runs = [(p, mbs) for lay, mbs in RUNS if lay == name for p in INVARIANT]
        if name == "tp1":
            runs += [(p, mbs) for p in PER_MICRO_BATCH for mbs in (8, 2)]
            runs += [(p, f"t64_{how}") for p in OLD_FROM_FORWARD for how in ("recompute", "forward")]
        save_root = os.path.join(root, name)
        losses = run_distributed(rl_steps, world, TINY_MODEL + SGD + layout(tp, pp), runs, init,
                                 save_root)[-1]
        for (p, mbs), loss in zip(runs, losses):
            jobs[(p, name, mbs)] = (loss, os.path.join(save_root, f"{p}_mb{mbs}"))
    keys = list(jobs)
    w0, *ws = run_distributed(many_full_weights, 1, [init] + [jobs[k][1] for k in keys])[0]
    return {k: (jobs[k][0], {n: (w0[n] - w[n]) / 1000.0 for n in w0}) for k, w in zip(keys, ws)}


def _max_rel_diff(a, b):
    num = max((a[k] - b[k]).abs().max().item() for k in a)
    den = max(b[k].abs().max().item() for k in b)
    return num / den


@pytest.mark.parametrize("preset_name", INVARIANT)
def test_gradient_is_layout_and_split_invariant(preset_name, steps):
    ref_loss, ref = steps[(preset_name, "tp1", 8)]
    assert max(v.abs().max().item() for v in ref.values()) > 1e-7, "the step moved no weight"
    for lay, mbs in RUNS[1:]:
        loss, grad = steps[(preset_name, lay, mbs)]
        assert abs(loss - ref_loss) <= 1e-6 * max(1.0, abs(ref_loss)), \
            f"{lay} mb{mbs}: loss {loss} vs {ref_loss}"
        rel = _max_rel_diff(grad, ref)
        assert rel <= 1e-5, f"{preset_name} {lay} mb{mbs}: gradient differs by {rel:.2e}"


def test_faithful_hpt_depends_on_micro_batch_split(steps):
    """Released HPT: SFT token-mean per micro-batch, averaged over micro-batches. With one
    micro-batch the SFT term is Σ NLL / n_demo_tokens; with 4 micro-batches the demo row sits
    alone in the last one and its mean is divided by 4 micro-batches."""
    loss1, g1 = steps[("hpt", "tp1", 8)]
    loss4, g4 = steps[("hpt", "tp1", 2)]
    assert _max_rel_diff(g4, g1) > 1e-2, "hpt should depend on the split (released behaviour)"
    # the demo's NLL (positive) enters with weight 1/4 instead of 1: the loss goes down
    assert loss4 < loss1 - 1e-3, (loss4, loss1)


@pytest.mark.parametrize("preset_name", OLD_FROM_FORWARD)
def test_old_logprobs_from_the_training_forward_equal_a_recompute_pass(preset_name, steps):
    loss_r, g_r = steps[(preset_name, "tp1", "t64_recompute")]
    loss_f, g_f = steps[(preset_name, "tp1", "t64_forward")]
    assert abs(loss_f - loss_r) <= 1e-6 * max(1.0, abs(loss_r))
    assert _max_rel_diff(g_f, g_r) <= 1e-5
    # and it is a different step from the synthetic (off-policy) old log-probs
    assert _max_rel_diff(g_f, steps[(preset_name, "tp1", "t64")][1]) > 1e-4


def test_faithful_luffy_depends_on_micro_batch_split(steps):
    """Released LUFFY: Σ_tokens / L_max and the entropy token-mean per micro-batch, averaged over
    micro-batches. The 4-way split divides each micro-batch's token sum by 4 micro-batches where
    the single micro-batch divides the whole sum by 1: the loss scale changes with the split."""
    loss1, g1 = steps[("luffy", "tp1", 8)]
    loss4, g4 = steps[("luffy", "tp1", 2)]
    rel = _max_rel_diff(g4, g1)
    assert rel > 1e-2, f"luffy should depend on the split (released behaviour), got {rel:.2e}"
    assert abs(loss4 - loss1) > 1e-3 * abs(loss1), (loss4, loss1)
