"""Exact resume after SIGKILL, and failures during a save (checkpoint.py, resume.py).

A run is killed with SIGKILL in the middle of a save; ``--load`` then continues from the last
complete checkpoint, and its losses, learning rates, rewards and final weights equal those of a
run never interrupted: SFT with a warm-up + cosine schedule (optimizer and scheduler state), and
CHORD-μ with a KL term and two optimizer steps per rollout batch killed in the middle of a batch
(the pending rollout rows, the sampling seeds, μ's step, the KL reference policy). A save that fails (disk full) stops the
run with the reason and leaves the previous checkpoint as it was."""
import io
import os
import signal
import subprocess
import sys


from dist_utils import run_distributed
from training.common import TINY_MODEL

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TRACKER = "latest_checkpointed_iteration.txt"

SFT = TINY_MODEL + ["--micro-batch-size", "4", "--global-batch-size", "8", "--lr", "3e-3",
                    "--lr-warmup-iters", "2", "--lr-decay-style", "cosine", "--min-lr", "1e-4",
                    "--seed", "7", "--train-iters", "6", "--save-interval", "2"]
RL = TINY_MODEL + ["--loss-preset", "chord_mu", "--rollout-batch-size", "2",
                    "--n-samples-per-prompt", "3", "--global-batch-size", "4",
                    "--micro-batch-size", "4", "--lr", "3e-3", "--seed", "11",
                    "--train-iters", "4", "--save-interval", "1", "--loss-kl-coef", "0.1"]


def _killed_run(point: str, iteration: int, argv: list, cwd) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]),
               PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    log = os.path.join(str(cwd), f"killed_{point}.log")
    with open(log, "w") as out:
        # its own process group: the checkpoint writer's helper processes outlive a SIGKILLed
        # parent, and are stopped with the group once the run is dead
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "kill_during_save.py"), point,
                                 str(iteration), *argv], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True)
        try:
            rc = proc.wait(timeout=300)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert rc == -signal.SIGKILL, open(log).read()[-4000:]


def _tracker(root) -> str:
    return open(os.path.join(root, TRACKER)).read().strip()


def _weights(model) -> dict:
    from megatron_hpt.training.checkpoint import unwrap
    return {k: v.detach().clone() for k, v in unwrap(model[0]).state_dict().items()
            if not k.endswith("_extra_state")}


def _run(argv):
    from megatron_hpt.train import run
    from megatron_hpt.training import distributed
    try:
        out = run(argv)
        return out["metrics"], _weights(out["model"])
    finally:
        distributed.destroy()


def resumed_and_uninterrupted(resumed: list, uninterrupted: list, extra: list) -> list:
    """Rank entry point: the resumed run, the uninterrupted one, then each of ``extra``."""
    return [_run(resumed), _run(uninterrupted)] + [_run(a) for a in extra]


def _same_numbers(got, want, keys):
    assert [m["iteration"] for m in got] == [m["iteration"] for m in want]
    for g, w in zip(got, want):
        for k in keys:
            assert g[k] == w[k], (k, g["iteration"], g[k], w[k])


def _same_weights(got, want):
    import torch
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_sft_killed_while_saving_resumes_exactly(tmp_path):
    ckpt, ref = str(tmp_path / "ckpt"), str(tmp_path / "ref")
    _killed_run("write", 4, SFT + ["--save", ckpt], tmp_path)
    # the save of iteration 4 never completed: only its staging directory exists, unnamed
    assert _tracker(ckpt) == "2"
    assert sorted(n for n in os.listdir(ckpt) if n.startswith("iter_")) == [
        "iter_0000002", "iter_0000004.tmp"]
    (resumed, w_resumed), (full, w_full) = run_distributed(
        resumed_and_uninterrupted, 1, SFT + ["--load", ckpt, "--save", ckpt],
        SFT + ["--save", ref], [])[0]
    assert [m["iteration"] for m in resumed] == [3, 4, 5, 6]
    _same_numbers(resumed, full[2:], ("lm loss", "grad_norm", "lr"))
    _same_weights(w_resumed, w_full)
    assert _tracker(ckpt) == "6" and not any(n.endswith(".tmp") for n in os.listdir(ckpt))


def test_chord_killed_mid_rollout_batch_resumes_exactly(tmp_path):
    """CHORD-μ (rollouts, demonstrations, the μ schedule), two optimizer steps per rollout batch;
    killed after iteration 4's directory was renamed but before the tracker named it: the resume
    starts at 3, inside rollout batch 1, and trains its second mini-batch from the saved rows
    (π_old = the policy that sampled them). Without them (removing rank_state/) the rows are
    re-sampled by the moved policy, whose ratio to itself is exactly 1: iteration 4 differs."""
    import shutil
    ckpt, ref, bare = (str(tmp_path / n) for n in ("ckpt", "ref", "bare"))
    _killed_run("tracker", 4, RL + ["--save", ckpt], tmp_path)
    assert _tracker(ckpt) == "3" and os.path.isdir(os.path.join(ckpt, "iter_0000004"))
    shutil.copytree(ckpt, bare)
    shutil.rmtree(os.path.join(bare, "iter_0000003", "rank_state"))
    (resumed, w_resumed), (full, w_full), (stale, _) = run_distributed(
        resumed_and_uninterrupted, 1, RL + ["--load", ckpt, "--save", ckpt],
        RL + ["--save", ref], [RL + ["--load", bare, "--save", bare]])[0]
    assert [m["iteration"] for m in resumed] == [4]
    _same_numbers(resumed, full[3:], ("lm loss", "grad_norm", "lr", "reward", "mu", "ratio_max",
                                      "ratio_min", "kl_loss"))
    assert full[3]["kl_loss"] != 0.0  # the reference is the starting policy, restored
    _same_weights(w_resumed, w_full)
    assert _tracker(ckpt) == "4"
    assert full[3]["ratio_max"] != 1.0 and stale[0]["ratio_max"] == stale[0]["ratio_min"] == 1.0


# --------------------------------------------------------------------------- RNG, disk full

def rng_and_disk_full(root: str, argv: list) -> dict:
    """Rank entry point: (1) the RNG streams saved with a checkpoint come back with --load and
    not with --no-load-rng; (2) a save failing with ENOSPC stops the run (exit 1, one reason
    line) and leaves the previous checkpoint as it was; (3) so does a crashing reward grader."""
    import contextlib
    import errno
    import random
    from types import SimpleNamespace

    import numpy as np
    import torch

    import megatron_hpt.training.checkpoint as ck
    from megatron_hpt.arguments import build_config, build_parser
    from megatron_hpt.train import main
    from megatron_hpt.training import distributed, resume
    from megatron_hpt.training.setup import build_model

    out = {}
    cfg = build_config(build_parser().parse_args(argv), 1, tokenizer_vocab_size=80)
    distributed.initialize(seed=cfg.seed)
    try:
        model = build_model(cfg)
        torch.rand(7), np.random.rand(3), random.random()  # move every stream off its seed
        ck.save_checkpoint(root + "/rng", 1, model, shape=cfg.shape, extra=resume.capture(object()))
        saved = (torch.rand(4), np.random.rand(2), random.random())
        for flag in (False, True):
            torch.manual_seed(5), np.random.seed(5), random.seed(5)
            fresh = (torch.rand(4), np.random.rand(2), random.random())
            torch.manual_seed(5), np.random.seed(5), random.seed(5)
            cfg.load, cfg.no_load_rng = root + "/rng", flag
            resume.restore(cfg, object())
            got = (torch.rand(4), np.random.rand(2), random.random())
            want = fresh if flag else saved
            out["no_load_rng" if flag else "load_rng"] = (
                torch.equal(got[0], want[0]) and bool((got[1] == want[1]).all()) and got[2] == want[2])
    finally:
        distributed.destroy()

    real = ck.dist_checkpointing

    def full_disk(state, path, *args, **kwargs):
        if path.endswith("iter_0000004.tmp"):
            with open(os.path.join(path, "__0_0.distcp"), "wb") as f:
                f.write(b"\0" * 1000)  # what a writer leaves when the disk fills
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real.save(state, path, *args, **kwargs)
    ck.dist_checkpointing = SimpleNamespace(save=full_disk, load=real.load)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            out["rc"] = main(argv + ["--train-iters", "5", "--save-interval", "2", "--save",
                                     root + "/full"])
    finally:
        ck.dist_checkpointing = real
    out["stderr"] = err.getvalue()

    import megatron_hpt.training.rl.task as rl_task

    def crashing_grader(name, timeout):
        def grade(response, answer):
            raise ZeroDivisionError("grader bug")
        return grade
    rl_task.reward_fn = crashing_grader
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        out["grader_rc"] = main(argv + ["--loss-preset", "grpo", "--rollout-batch-size", "2",
                                        "--n-samples-per-prompt", "4", "--train-iters", "2"])
    out["grader_stderr"] = err.getvalue()
    return out


def test_rng_restored_unless_no_load_rng_disk_full_at_save_grader_crash(tmp_path):
    root = str(tmp_path)
    out = run_distributed(rng_and_disk_full, 1, root, TINY_MODEL + [
        "--micro-batch-size", "4", "--global-batch-size", "8", "--seed", "3"])[0]
    assert out["load_rng"] and out["no_load_rng"]
    assert out["rc"] == 1
    last = out["stderr"].strip().splitlines()[-1]
    assert last.startswith("megatron_hpt.train: rank 0: stopped: CheckpointSaveError: saving "
                           f"iteration 4 to {root}/full failed ([Errno 28] No space left on "
                           "device"), last
    assert "the last complete checkpoint (iteration 2) is untouched" in last
    assert _tracker(f"{root}/full") == "2"
    assert sorted(n for n in os.listdir(f"{root}/full") if n.startswith("iter_")) == ["iter_0000002"]
    # a grader that crashes stops the run with the reason
    assert out["grader_rc"] == 1
    from megatron_hpt.data.arithmetic import make_problem
    answer = make_problem(3, 0).answer  # --seed 3: the first prompt of rollout batch 0
    assert out["grader_stderr"].strip().splitlines()[-1] == (
        "megatron_hpt.train: rank 0: stopped: RuntimeError: the reward grader failed on rollout "
        f"batch 0, prompt 0 of this rank (answer {answer!r}): ZeroDivisionError: grader bug")
