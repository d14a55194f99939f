"""benchmarks/gpu_smoke.py is never run in CPU CI; here: it lists its checks, prints their
commands, every trainer command is a valid configuration at its GPU count (GPU-only flags
dropped, as CPU validation refuses them), and the loss-head comparison runs (tiny, on CPU)."""
import os
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import gpu_smoke  # noqa: E402

GPU_ONLY = {"--bf16": 0, "--use-distributed-optimizer": 0, "--fp8-format": 1, "--transformer-impl": 1}


def test_list_and_dry_run_print_every_check(tmp_path):
    for flag in ("--list", "--dry-run"):
        out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_smoke.py"), flag,
                              "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        for name in ("bf16_te_step", "fp8_hybrid_step", "distributed_optimizer", "loss_head_bf16_vs_fp32",
                     "embedded_engine_grpo", "vllm_generate_update_sleep_wake", "hpt_tp2_pp2_dp2_vllm"):
            assert name in out.stdout, (flag, name)
    assert "--fp8-format hybrid" in out.stdout and "--nproc-per-node=8" in out.stdout
    bad = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_smoke.py"), "--only", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown checks ['nope']" in bad.stderr


@pytest.mark.parametrize("check", [c for c in gpu_smoke.CHECKS if c.iterations], ids=lambda c: c.name)
def test_trainer_commands_are_valid_configurations(check, tmp_path):
    from megatron_hpt.arguments import build_config, build_parser
    gpu_smoke.write_tiny_llama(str(tmp_path / "tiny_llama"))
    argv = check.argv(str(tmp_path))
    args, i = argv[argv.index("megatron_hpt.train") + 1:], 0
    kept = []
    while i < len(args):
        if args[i] in GPU_ONLY:
            i += 1 + GPU_ONLY[args[i]]
            continue
        kept.append(args[i])
        i += 1
    build_config(build_parser().parse_args(kept), check.gpus, tokenizer_vocab_size=83)


def test_loss_head_comparison_runs_on_cpu():
    gaps = gpu_smoke.loss_head_gap("cpu", rows=8, seq=8, vocab=256, presets=("grpo", "sft"))
    for name, g in gaps.items():
        assert g["finite"] and g["grad_gap"] < 5e-2 and g["loss_gap"] < 5e-3, (name, g)


def test_trainer_log_judge():
    line = (" [t] iteration        {i}/       2 | lm loss: {loss} | grad norm: 1.0 | "
            "number of skipped iterations: {s} |")
    ok = "\n".join(line.format(i=i, loss="1.5E+00", s=0) for i in (1, 2))
    assert gpu_smoke.judge_trainer_log(ok, 2) is None
    assert "iteration lines" in gpu_smoke.judge_trainer_log(ok, 3)
    assert "losses" in gpu_smoke.judge_trainer_log(ok.replace("1.5E+00", "nan"), 2)
    assert "skipped" in gpu_smoke.judge_trainer_log(ok.replace("iterations: 0", "iterations: 1"), 2)
