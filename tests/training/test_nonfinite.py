"""Non-finite loss or gradient norm: the step is skipped (weights, Adam moments and LR schedule
untouched) and counted; the run stops after --max-skipped-iterations in a row with the reason
and exit code 1; no checkpoint is ever written from non-finite weights."""
import os

import pytest
import torch

from dist_utils import run_distributed
from training.common import TINY_MODEL, TRAIN, layout
from training.nonfinite_entry import train_with_faults


def _checkpoint_tensors(root):
    """Every tensor of every iter_* checkpoint under ``root`` (read with DCP, no unpickling)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    out = {}
    for name in sorted(os.listdir(root)):
        if not name.startswith("iter_"):
            continue
        reader = dcp.FileSystemReader(os.path.join(root, name))
        md = reader.read_metadata().state_dict_metadata
        state = {k: torch.empty(v.size, dtype=v.properties.dtype) for k, v in md.items()
                 if isinstance(v, TensorStorageMetadata)}
        dcp.load(state, storage_reader=reader, no_dist=True)
        out[name] = state
    return out


def test_transient_nan_steps_are_skipped_and_training_goes_on(tmp_path):
    """PP2: a NaN gradient at step 2 and a NaN loss (finite gradients, seen only by the last
    stage) at step 3 are both skipped on both stages; steps 1 and 4 update as usual."""
    save = str(tmp_path / "ckpt")
    argv = TINY_MODEL + TRAIN + layout(1, 2) + ["--train-iters", "4", "--save", save,
                                                "--max-skipped-iterations", "3"]
    results = run_distributed(train_with_faults, 2, argv, {2: "grad", 3: "loss"})
    for rank, res in enumerate(results):
        assert res["rc"] == 0, res["stderr"]
        calls = res["calls"]
        assert [c["weights_changed"] for c in calls] == [True, False, False, True], rank
        assert [c["moments_changed"] for c in calls] == [True, False, False, True], rank
        assert [c["schedule_steps"] for c in calls] == [1, 0, 0, 1], rank
        assert [c["metrics"]["skipped"] for c in calls] == [0, 1, 1, 0], rank
    last = results[-1]["calls"]
    assert all(torch.isfinite(torch.tensor(c["metrics"]["lm loss"])) for c in last[3:])
    with open(os.path.join(save, "latest_checkpointed_iteration.txt")) as f:
        assert f.read().strip() == "4"


def test_divergent_run_stops_after_max_skipped_and_never_saves_nonfinite(tmp_path):
    """--lr 1e6 --clip-grad 0: the weights blow up after the first update, every later step is
    non-finite and skipped; after 3 in a row the run stops (exit 1, reason on stderr); the
    checkpoints written every iteration before that hold only finite tensors."""
    save = str(tmp_path / "ckpt")
    train = [a for a in TRAIN]
    train[train.index("--lr") + 1] = "1e6"
    train[train.index("--clip-grad") + 1] = "0"
    argv = TINY_MODEL + train + layout() + ["--train-iters", "20", "--save", save, "--save-interval", "1",
                                            "--max-skipped-iterations", "3"]
    (res,) = run_distributed(train_with_faults, 1, argv, {})
    skipped = [c["metrics"]["skipped"] for c in res["calls"]]
    assert res["rc"] == 1, res["stderr"]
    assert skipped[-3:] == [1, 1, 1] and len(skipped) < 20, skipped
    assert "3 iterations in a row were skipped (--max-skipped-iterations 3)" in res["stderr"]
    assert all(not c["weights_changed"] for c, s in zip(res["calls"], skipped) if s)
    saved = _checkpoint_tensors(save)
    assert saved, "no checkpoint before the divergence"
    # every iteration but the one that stops the run saved (skipped ones keep finite weights)
    assert sorted(saved) == [f"iter_{i:07d}" for i in range(1, len(skipped))], sorted(saved)
    for name, state in saved.items():
        for key, t in state.items():
            assert torch.isfinite(t).all(), (name, key)


def test_weights_check_refuses_nonfinite_before_a_save():
    from megatron_hpt.training.nonfinite import NonFiniteStop, assert_finite_weights
    model = [torch.nn.Linear(3, 2)]
    assert_finite_weights(model, 4, "/nowhere")  # finite: no error
    with torch.no_grad():
        model[0].weight[1, 2] = float("inf")
    with pytest.raises(NonFiniteStop, match=r"not saving iteration 4 to /nowhere: .*weight"):
        assert_finite_weights(model, 4, "/nowhere")


def test_max_skipped_iterations_must_be_positive():
    from megatron_hpt.arguments import ConfigError, build_config, build_parser
    args = build_parser().parse_args(TINY_MODEL + TRAIN + ["--max-skipped-iterations", "0"])
    with pytest.raises(ConfigError, match="--max-skipped-iterations must be >= 1, got 0"):
        build_config(args, 1, tokenizer_vocab_size=80)
