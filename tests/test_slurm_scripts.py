"""examples/slurm: the scripts parse (bash -n) and their dry run resolves the per-task commands of
2 nodes x 8 GPUs (Slurm's variables simulated): RANK/LOCAL_RANK/WORLD_SIZE per task, the layout
flags, resume from the save dir when it holds a checkpoint, else from the converted init."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM = os.path.join(ROOT, "examples", "slurm")


@pytest.mark.parametrize("name", ["hpt.sbatch", "convert.sbatch", "task.sh"])
def test_bash_parses(name):
    subprocess.run(["bash", "-n", os.path.join(SLURM, name)], check=True)


def _dry_run(tmp_path, size, out):
    env = dict(os.environ, DRY_RUN="1", SLURM_NNODES="2", SLURM_NTASKS_PER_NODE="8",
               SLURM_NTASKS="16", SLURM_JOB_NODELIST="gpu-a17,gpu-a18", SLURM_JOB_ID="4242",
               MODEL_SIZE=size, HF_DIR="/models/hf", DATA="/data/train.parquet", OUT=str(out),
               PATH="/usr/bin:/bin")  # no scontrol: the script falls back to the plain list
    r = subprocess.run(["bash", os.path.join(SLURM, "hpt.sbatch")], env=env, cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if line.startswith("task ")], r.stdout


def test_dry_run_2x8_per_task_env_and_flags(tmp_path):
    tasks, out = _dry_run(tmp_path, "8b", tmp_path / "run")
    assert "--kill-on-bad-exit=1" in out and "--container-image=" in out
    assert len(tasks) == 16
    for r, line in enumerate(tasks):
        env = dict(re.findall(r"(\w+)=(\S+)", line.split(":")[0]))
        assert env == {"RANK": str(r), "LOCAL_RANK": str(r % 8), "WORLD_SIZE": "16",
                       "MASTER_ADDR": "gpu-a17", "MASTER_PORT": "29500"}
        cmd = line.split(": ", 1)[1]
        assert cmd.startswith("python -m megatron_hpt.train")
        for flag in ("--tensor-model-parallel-size 2 ", "--sequence-parallel",
                     "--use-distributed-optimizer", "--keep-last 3", "--exit-signal-handler",
                     "--exit-signal SIGUSR1", "--load " + str(tmp_path / "run" / "init"),
                     "--finetune"):
            assert flag in cmd, flag
    assert (tmp_path / "logs").is_dir()


def test_dry_run_resumes_from_save_dir_and_70b_layout(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "latest_checkpointed_iteration.txt").write_text("100")
    tasks, _ = _dry_run(tmp_path, "70b", run)
    cmd = tasks[0].split(": ", 1)[1]
    assert f"--load {run} " in cmd and "--finetune" not in cmd
    from training.test_plan import LAYOUT_70B
    train_flags = [f for f in LAYOUT_70B if not f.startswith("--rollout")]
    # the planner's 70B layout is the script's (the planner-only rollout flags aside)
    for flag, value in zip(train_flags, train_flags[1:] + [""]):
        if flag.startswith("--"):
            assert flag in cmd, flag
            if value and not value.startswith("--"):
                assert f"{flag} {value}" in cmd, flag
    assert "--pipeline-model-parallel-size 4" in cmd and "--seq-length 8192" in cmd
