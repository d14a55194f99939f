"""Megatron's performance flags on CPU: interleaved 1F1B (PP=4, two chunks per stage) with full
recompute reproduces the one-process losses; --keep-last rotates checkpoints; the exit-signal
handler saves at the step boundary and stops (what a Slurm requeue relies on)."""
import os
import signal

import pytest
import torch

from dist_utils import run_distributed
from megatron_hpt.training.checkpoint import read_tracker, rotate_checkpoints
from training.common import TINY_MODEL, TRAIN, layout, train

EIGHT_LAYERS = [a if a != "2" or TINY_MODEL[i - 1] != "--num-layers" else "8"
               for i, a in enumerate(TINY_MODEL)]


def _save_init(root):
    from megatron_hpt.arguments import build_config, build_parser
    from megatron_hpt.data.tokenizer import build_char_tokenizer
    from megatron_hpt.training import distributed
    from megatron_hpt.training.checkpoint import save_checkpoint
    from megatron_hpt.training.setup import build_model
    cfg = build_config(build_parser().parse_args(EIGHT_LAYERS + TRAIN), 1,
                       tokenizer_vocab_size=len(build_char_tokenizer()))
    distributed.initialize(seed=cfg.seed)
    save_checkpoint(root, 0, build_model(cfg), shape=cfg.shape)
    distributed.destroy()


def _train_with_signal_at(argv, at_iteration):
    """Rank entry point: the trainer, with SIGUSR1 sent to itself during iteration ``at``."""
    import megatron_hpt.train as trainer
    real = trainer.train_step
    calls = []

    def step(*a, **k):
        calls.append(1)
        if len(calls) == at_iteration:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(*a, **k)
    trainer.train_step = step
    return train(argv)


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("init8"))
    run_distributed(_save_init, 1, root)
    return root


def test_interleaved_pipeline_with_full_recompute_matches_one_process(init_ckpt):
    base = EIGHT_LAYERS + TRAIN + ["--train-iters", "2", "--load", init_ckpt, "--finetune"]
    (ref,) = run_distributed(train, 1, base + layout())
    got = run_distributed(train, 4, base + layout(1, 4) + [
        "--num-layers-per-virtual-pipeline-stage", "1", "--recompute-granularity", "full",
        "--recompute-method", "uniform", "--recompute-num-layers", "1"])[-1]
    r = torch.tensor([m["lm loss"] for m in ref], dtype=torch.float64)
    g = torch.tensor([m["lm loss"] for m in got], dtype=torch.float64)
    assert len(g) == 2 and torch.allclose(g, r, rtol=0, atol=1e-5), f"{g.tolist()} vs {r.tolist()}"


def test_exit_signal_saves_and_stops_and_keep_last_rotates(init_ckpt, tmp_path):
    save = str(tmp_path / "run")
    argv = EIGHT_LAYERS + TRAIN + ["--train-iters", "10", "--load", init_ckpt, "--finetune",
                                  "--save", save, "--save-interval", "1", "--keep-last", "2",
                                  "--exit-signal-handler", "--exit-signal", "SIGUSR1"]
    (metrics,) = run_distributed(_train_with_signal_at, 1, argv, 4)
    assert [m["iteration"] for m in metrics] == [1, 2, 3, 4]
    assert read_tracker(save) == "4"
    assert sorted(n for n in os.listdir(save) if n.startswith("iter_")) == [
        "iter_0000003", "iter_0000004"]


def test_rotate_keeps_newest_and_tracked(tmp_path):
    for i in (1, 2, 5, 10):
        os.makedirs(tmp_path / f"iter_{i:07d}")
    os.makedirs(tmp_path / "release")
    os.makedirs(tmp_path / "iter_0000011.tmp")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("2")  # tracker names an old one
    rotate_checkpoints(str(tmp_path), 1)
    assert sorted(os.listdir(tmp_path)) == ["iter_0000002", "iter_0000010", "iter_0000011.tmp",
                                            "latest_checkpointed_iteration.txt", "release"]
