#!/usr/bin/env python
"""GPU smoke test: the paths CPU CI cannot run, each checked once, one PASS/FAIL line per check.

    benchmarks/gpu_smoke.sh                 # every check this machine's GPU count allows (<10 min on 1 H100)
    benchmarks/gpu_smoke.sh --list          # the checks and the GPUs each needs; runs nothing
    benchmarks/gpu_smoke.sh --dry-run       # the command of each check; runs nothing
    benchmarks/gpu_smoke.sh --only fp8_hybrid_step,vllm_generate_update_sleep_wake

Checks (1 GPU unless noted): the provider's TE spec has the parameter names the conversion table
expects; a bf16 training step with the Transformer Engine spec; an FP8 step (--fp8-format hybrid);
the distributed optimizer; the loss head on bf16 vs fp32 logits (loss/gradient gap and time, per
preset); the embedded rollout engine (GRPO); vLLM generate + weight update + sleep/wake; with 8
GPUs, 3 HPT steps at TP2 PP2 DP2 with vLLM rollouts. Every check runs in its own process (a
crashed check does not stop the others); the exit code is the number of failed checks.
A tiny Llama-shaped model with the built-in character tokenizer is written to --workdir first
(no download).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

#: a small Llama shape with sizes FP8 GEMMs accept (multiples of 16)
MODEL = ["--num-layers", "4", "--hidden-size", "512", "--ffn-hidden-size", "1408",
         "--num-attention-heads", "8", "--num-query-groups", "4", "--seq-length", "256",
         "--max-position-embeddings", "512", "--normalization", "RMSNorm", "--swiglu",
         "--position-embedding-type", "rope", "--disable-bias-linear",
         "--untie-embeddings-and-output-weights", "--vocab-size", "128"]
STEP = ["--micro-batch-size", "4", "--global-batch-size", "8", "--lr", "1e-4", "--log-interval", "1",
        "--seed", "1"]
RL = ["--rollout-batch-size", "2", "--n-samples-per-prompt", "4", "--rollout-max-response-len", "32"]


@dataclass
class Check:
    name: str
    gpus: int
    what: str
    argv: Callable[[str], List[str]]
    """workdir -> the command line of the check"""
    iterations: int = 0
    """for trainer runs: iteration lines expected in the log (0: the check prints PASS itself)"""
    env: Dict[str, str] = field(default_factory=dict)


def _torchrun(n: int, args: List[str]) -> List[str]:
    return ["torchrun", "--standalone", f"--nproc-per-node={n}", "-m", "megatron_hpt.train"] + args


def _self(name: str) -> Callable[[str], List[str]]:
    return lambda work: [sys.executable, os.path.abspath(__file__), "--in-process", name, "--workdir", work]


CHECKS = [
    Check("te_spec_names", 1, "provider picks the TE spec on CUDA+TE; its parameter names are the "
          "conversion table's", _self("te_spec_names")),
    Check("bf16_te_step", 1, "3 bf16 SFT steps, --transformer-impl transformer_engine",
          lambda w: _torchrun(1, MODEL + STEP + ["--bf16", "--transformer-impl", "transformer_engine",
                                                 "--train-iters", "3"]), iterations=3),
    Check("fp8_hybrid_step", 1, "3 SFT steps with --fp8-format hybrid (TE spec, bf16)",
          lambda w: _torchrun(1, MODEL + STEP + ["--bf16", "--fp8-format", "hybrid", "--train-iters", "3"]),
          iterations=3),
    Check("distributed_optimizer", 1, "3 bf16 steps with --use-distributed-optimizer, then a save",
          lambda w: _torchrun(1, MODEL + STEP + ["--bf16", "--use-distributed-optimizer", "--train-iters", "3",
                                                 "--save", os.path.join(w, "ckpt_distopt")]), iterations=3),
    Check("loss_head_bf16_vs_fp32", 1, "loss + gradient of each preset from bf16 vs fp32 logits "
          "(gap, time)", _self("loss_head_bf16_vs_fp32")),
    Check("embedded_engine_grpo", 1, "2 GRPO steps, rollouts decoded by the training model",
          lambda w: _torchrun(1, MODEL + STEP[:2] + ["--lr", "1e-5",
                                                     "--log-interval", "1", "--bf16", "--loss-preset", "grpo",
                                                     "--rollout-engine", "embedded", "--train-iters", "2"] + RL),
          iterations=2),
    Check("vllm_generate_update_sleep_wake", 1, "vLLM generate, weight update from the export stream, "
          "sleep/wake, generate again (same greedy output)", _self("vllm_generate_update_sleep_wake")),
    Check("hpt_tp2_pp2_dp2_vllm", 8, "3 HPT steps at TP2 PP2 DP2 with vLLM rollouts",
          lambda w: _torchrun(8, ["--hf-model", os.path.join(w, "tiny_llama")] + STEP[:2] +
                              ["--lr", "1e-5", "--log-interval", "1", "--bf16",
                               "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                               "--loss-preset", "hpt", "--rollout-engine", "vllm", "--train-iters", "3",
                               "--seq-length", "256", "--rollout-batch-size", "4", "--n-samples-per-prompt",
                               "3", "--rollout-max-response-len", "32"]), iterations=3),
]


# ------------------------------------------------------------------ in-process checks

def write_tiny_llama(path: str) -> str:
    """A random Llama (shape of MODEL) with the built-in character tokenizer, saved as HF."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    from megatron_hpt.data.tokenizer import build_char_tokenizer
    tok = build_char_tokenizer()
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1408, num_attention_heads=8, num_key_value_heads=4,
                      num_hidden_layers=4, vocab_size=128, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def check_te_spec_names(work: str) -> str:
    import torch
    from megatron_hpt.conversion import mapping_for
    from megatron_hpt.conversion.names import te_spec_parameter_names
    from megatron_hpt.models import build_gpt_model, shape_from_hf_config, transformer_config
    from megatron_hpt.models.hf_config import load_hf_config
    from megatron_hpt.models.provider import resolve_transformer_impl
    from megatron_hpt.training import distributed
    assert resolve_transformer_impl() == "transformer_engine", "the rule did not pick TE on CUDA+TE"
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    distributed.initialize()
    shape = shape_from_hf_config(load_hf_config(write_tiny_llama(os.path.join(work, "tiny_llama"))))
    model = build_gpt_model(shape, transformer_config(shape, params_dtype=torch.bfloat16, bf16=True),
                            transformer_impl="transformer_engine")
    got = sorted(n for n, _ in model.named_parameters())
    want = sorted(te_spec_parameter_names(mapping_for("llama"), shape))
    assert got == want, f"TE names differ: only model {sorted(set(got) - set(want))}, " \
                        f"only table {sorted(set(want) - set(got))}"
    extra = sorted(k for k in model.state_dict() if k.endswith("_extra_state"))
    return f"{len(got)} parameters as the table says; _extra_state entries: {len(extra)}"


def loss_head_gap(device: str = "cuda", rows: int = 8, seq: int = 256, vocab: int = 32768,
                  presets=("grpo", "dr_grpo", "dapo", "cispo", "egspo", "sft")) -> Dict[str, dict]:
    """Per preset: gap of the loss (relative, or absolute below 1) and relative gap (norm) of
    d loss/d logits between bf16 and fp32 logits (the same values, rounded to bf16 first, so the
    gap is the loss head's own), and forward+backward ms. PASS bound: one bf16 rounding
    (2^-8 relative) of the loss; a log-prob function that returns the logits' dtype (bf16)
    shows ~2e-3 here, an fp32 one far less."""
    import torch
    from megatron_hpt.loss import compute_advantages, policy_loss, preset, vocab_parallel_logprob_entropy
    g = torch.Generator(device="cpu").manual_seed(0)
    logits16 = (3 * torch.randn(rows, seq, vocab, generator=g)).to(torch.bfloat16).to(device)
    labels = torch.randint(0, vocab, (rows, seq), generator=g).to(device)
    mask = (torch.arange(seq) >= seq // 4).float().expand(rows, seq).contiguous().to(device)
    rewards = torch.tensor([1., 0.] * (rows // 2)).to(device)
    group = (torch.arange(rows) // 4).to(device)
    out = {}
    for name in presets:
        cfg = preset(name)
        adv = compute_advantages(rewards, group, cfg, response_mask=mask)
        res = {}
        for dtype in (torch.bfloat16, torch.float32):
            x = logits16.to(dtype).detach().requires_grad_(True)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            lp, ent = vocab_parallel_logprob_entropy(x, labels)
            old = lp.detach().float() + 0.05  # engine / recompute log-probs are fp32
            loss, _ = policy_loss(lp, old, None if adv is None else adv.to(device), mask, cfg, entropy=ent,
                                  step=0)
            loss.backward()
            if device == "cuda":
                torch.cuda.synchronize()
            res[dtype] = (loss.detach().double(), x.grad.double(), (time.perf_counter() - t0) * 1e3)
        (l16, g16, t16), (l32, g32, t32) = res[torch.bfloat16], res[torch.float32]
        out[name] = dict(loss_gap=float((l16 - l32).abs() / l32.abs().clamp_min(1.0)), loss_fp32=float(l32),
                         grad_gap=float((g16 - g32).norm() / g32.norm().clamp_min(1e-30)),
                         ms_bf16=t16, ms_fp32=t32, finite=bool(torch.isfinite(l16) and torch.isfinite(g16).all()))
    return out


def check_loss_head_bf16_vs_fp32(work: str) -> str:
    gaps = loss_head_gap("cuda")
    bad = {k: v for k, v in gaps.items() if not v["finite"] or v["loss_gap"] > 5e-3 or v["grad_gap"] > 5e-2}
    lines = "; ".join(f"{k}: loss gap {v['loss_gap']:.1e}, grad gap {v['grad_gap']:.1e}, "
                      f"{v['ms_bf16']:.1f} ms bf16 / {v['ms_fp32']:.1f} ms fp32" for k, v in gaps.items())
    assert not bad, f"gap too large or non-finite: {sorted(bad)} ({lines})"
    return lines


def check_vllm_generate_update_sleep_wake(work: str) -> str:
    import torch
    from megatron_hpt.conversion.safetensors_io import HFSafetensors
    from megatron_hpt.rollout import SamplingParams
    from megatron_hpt.rollout.vllm_engine import VllmEngine
    hf_dir = write_tiny_llama(os.path.join(work, "tiny_llama"))
    engine = VllmEngine(hf_dir, max_model_len=512, gpu_memory_utilization=0.3)
    prompts = [[1, 20, 21, 22], [1, 30, 31]]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16)
    before = [s.response_token_ids for s in engine.generate(prompts, 1, greedy)]
    hf = HFSafetensors(hf_dir)
    engine.sleep()
    engine.update_weights([[(n, hf.get(n).cuda()) for n in hf.shape_of]])  # the same weights back
    engine.wake_up()
    after = [s.response_token_ids for s in engine.generate(prompts, 1, greedy)]
    assert before == after, f"greedy output changed across update + sleep/wake: {before} vs {after}"
    # the trainer's cycle (TrainerEngine): level 2 drops the weights, which the stream re-sends
    # between waking the weights and waking the KV cache
    free_awake = torch.cuda.mem_get_info()[0]
    engine.sleep(level=2)
    freed = torch.cuda.mem_get_info()[0] - free_awake
    engine.wake_up(tags=["weights"])
    engine.update_weights([[(n, hf.get(n).cuda()) for n in hf.shape_of]])
    engine.wake_up(tags=["kv_cache"])
    again = [s.response_token_ids for s in engine.generate(prompts, 1, greedy)]
    engine.shutdown()
    assert freed > 0, f"sleep(level=2) freed {freed} bytes"
    assert before == again, f"greedy output changed across a level-2 sleep + re-stream: {before} vs {again}"
    return (f"greedy output identical after update + sleep/wake and after sleep(level=2) + "
            f"re-stream ({sum(map(len, again))} tokens; level 2 freed {freed / 2**30:.2f} GiB)")


IN_PROCESS = {"te_spec_names": check_te_spec_names, "loss_head_bf16_vs_fp32": check_loss_head_bf16_vs_fp32,
              "vllm_generate_update_sleep_wake": check_vllm_generate_update_sleep_wake}


# ------------------------------------------------------------------ driver

def judge_trainer_log(text: str, iterations: int) -> Optional[str]:
    """None when the log has ``iterations`` iteration lines with finite losses and no skipped
    iteration; else what is wrong."""
    lines = [l for l in text.splitlines() if re.search(r"iteration\s+\d+/", l)]
    if len(lines) < iterations:
        return f"{len(lines)} iteration lines, expected {iterations}"
    losses = [float(m.group(1)) for l in lines for m in [re.search(r"lm loss: ([^ |]+)", l)] if m]
    if len(losses) < iterations or any(not (x == x and abs(x) != float("inf")) for x in losses):
        return f"losses {losses}"
    skipped = re.findall(r"number of skipped iterations:\s+(\d+)", lines[-1])
    if skipped and int(skipped[0]) > 0:
        return f"{skipped[0]} skipped iterations"
    return None


def run_check(check: Check, work: str, timeout: float) -> tuple:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **check.env)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(check.argv(work), cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s", time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    with open(os.path.join(work, f"{check.name}.log"), "w") as f:
        f.write(text)
    if proc.returncode != 0:
        tail = " | ".join(text.strip().splitlines()[-3:])
        return False, f"exit {proc.returncode}: {tail[-400:]}", seconds
    if check.iterations:
        problem = judge_trainer_log(text, check.iterations)
        return problem is None, problem or "ok", seconds
    found = re.findall(r"^RESULT (.*)$", proc.stdout, re.M)
    return bool(found), found[-1] if found else "no RESULT line", seconds


def gpu_count() -> int:
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:
        return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print the checks and the GPUs each needs")
    p.add_argument("--dry-run", action="store_true", help="print each check's command, run nothing")
    p.add_argument("--only", default=None, help="comma-separated check names")
    p.add_argument("--workdir", default=None, help="logs, the tiny model, checkpoints (default: a temp dir)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per check")
    p.add_argument("--in-process", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.in_process:
        print(f"RESULT {IN_PROCESS[a.in_process](a.workdir)}", flush=True)
        return 0
    checks = CHECKS
    if a.only:
        wanted = a.only.split(",")
        unknown = sorted(set(wanted) - {c.name for c in CHECKS})
        if unknown:
            p.error(f"--only: unknown checks {unknown}; known: {[c.name for c in CHECKS]}")
        checks = [c for c in CHECKS if c.name in wanted]
    work = a.workdir or tempfile.mkdtemp(prefix="gpu_smoke_")
    if a.list or a.dry_run:
        for c in checks:
            print(f"{c.name:34s} {c.gpus} GPU{'s' if c.gpus > 1 else ' '}  {c.what}")
            if a.dry_run:
                print("    " + " ".join(c.argv(work)))
        return 0
    gpus = gpu_count()
    if gpus == 0:
        print("FAIL  no CUDA GPU visible: this script checks the GPU path (use --list / --dry-run on CPU)")
        return 1
    os.makedirs(work, exist_ok=True)
    write_tiny_llama(os.path.join(work, "tiny_llama"))
    failed = 0
    for c in checks:
        if c.gpus > gpus:
            print(f"SKIP  {c.name}: needs {c.gpus} GPUs, {gpus} visible", flush=True)
            continue
        ok, detail, seconds = run_check(c, work, a.timeout)
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {c.name} ({seconds:.0f} s): {detail}", flush=True)
    print(f"{len(checks) - failed} passed, {failed} failed; logs in {work}")
    with open(os.path.join(work, "summary.json"), "w") as f:
        json.dump(dict(failed=failed, gpus=gpus), f)
    return failed


if __name__ == "__main__":
    sys.exit(main())
