"""examples/cpu_demo.py (README's first command): its two stages run in one process and print the
lines examples/cpu_demo.sh reads; its flags pass every preflight check; the longest built-in row
(worked solution + EOS) and the longest rollout fit its --seq-length. The demo's accuracy and time
are measured by running it (benchmarks/RESULTS.md), not here."""
import importlib.util
import os
import re

from megatron_hpt.data.arithmetic import worked_solution
from megatron_hpt.data.tokenizer import load_tokenizer
from megatron_hpt.training import preflight

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _demo(out):
    os.environ["OUT"] = str(out)
    try:
        spec = importlib.util.spec_from_file_location(
            "cpu_demo", os.path.join(ROOT, "examples", "cpu_demo.py"))
        demo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(demo)
    finally:
        del os.environ["OUT"]
    return demo


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_demo_flags_pass_preflight_and_rows_fit(tmp_path):
    demo = _demo(tmp_path)
    cfg = preflight.prepare(demo.MODEL + demo.SFT)[3]
    assert cfg.loss_preset == "sft" and cfg.save == f"{tmp_path}/sft"
    seq = int(_flag(demo.MODEL, "--seq-length"))
    # the longest 2-digit problem: prompt, worked solution with two carries, EOS
    prompt, solution = "99+99=", worked_solution(99, 99)
    assert solution == "9+9=18;9+9+1=19#198"
    tok = load_tokenizer("builtin:char")
    row = len(tok.encode(prompt + solution, add_special_tokens=False)) + 1
    assert row <= seq + 1
    # a rollout is the prompt plus at most --rollout-max-response-len tokens (EOS included)
    response = int(_flag(demo.HPT, "--rollout-max-response-len"))
    assert len(solution) + 1 <= response
    assert len(tok.encode(prompt, add_special_tokens=False)) + response <= seq + 1
    assert "--finetune" in demo.HPT and _flag(demo.HPT, "--load") == f"{tmp_path}/sft"


def test_demo_runs_both_stages_in_one_process(tmp_path, capsys):
    """3 SFT steps, then 3 HPT steps from their checkpoint (flags after the demo's win)."""
    demo = _demo(tmp_path)
    short = ["--train-iters", "3", "--eval-interval", "1000", "--log-interval", "1"]
    assert demo.main(short) == 0
    out = capsys.readouterr().out
    assert os.path.isfile(tmp_path / "sft" / "latest_checkpointed_iteration.txt")
    assert os.path.isfile(tmp_path / "hpt" / "latest_checkpointed_iteration.txt")
    hpt_lines = out.split("== stage 2")[1].splitlines()
    shares = [float(m) for m in re.findall(r"sft share: ([0-9.E+-]+)", "\n".join(hpt_lines))]
    assert len(shares) == 3 and all(0.0 <= s <= 1.0 for s in shares)
    trend = re.search(r"cpu demo: held-out greedy accuracy ([0-9.]+) after SFT; HPT sft share "
                      r"([0-9.]+) \(first 1 steps\) -> ([0-9.]+) \(last 1\)", out)
    assert trend and abs(float(trend[2]) - round(shares[0], 2)) < 1e-9
    assert abs(float(trend[3]) - round(shares[-1], 2)) < 1e-9
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"cpu demo: final held-out greedy accuracy [01]\.[0-9]{3}", last)
