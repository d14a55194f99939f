"""HF -> Megatron -> 2 steps of the real trainer (TP2; PP2; a model built from Megatron flags at
DP2) -> tools/convert_megatron_to_hf.py -> transformers: the exported model's logits equal the
trained model's own logits (computed from the live model chunks) to 1e-4. The training
checkpoints hold optimizer state, which the exporter ignores."""
import importlib.util
import io
import json
import os
from contextlib import redirect_stderr

import pytest
import torch

from conversion_helpers import hf_logits, read_safetensors_dir
from dist_utils import run_distributed
from trained_export_worker import train_and_logits

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOKENS = torch.tensor([[1, 7, 12, 40, 3, 9, 22, 5, 18, 33], [1, 30, 31, 8, 17, 44, 9, 11, 50, 2]])
TINY_FLAGS = ["--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "128",
              "--num-attention-heads", "4", "--num-query-groups", "2", "--max-position-embeddings", "64",
              "--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
              "--disable-bias-linear", "--untie-embeddings-and-output-weights"]


def _tool_main():
    spec = importlib.util.spec_from_file_location("convert_megatron_to_hf",
                                                  os.path.join(REPO, "tools", "convert_megatron_to_hf.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _export(argv):
    err = io.StringIO()
    with redirect_stderr(err):
        rc = _tool_main()(argv + ["--no-progress"])
    return rc, err.getvalue()


def _sft_data(path):
    g = torch.Generator().manual_seed(0)
    with open(path, "w") as f:
        for _ in range(16):
            words = [f"w{int(i)}" for i in torch.randint(0, 50, (7,), generator=g)]
            f.write(json.dumps({"prompt": " ".join(words[:4]), "target": " ".join(words[4:]),
                                "answer": words[4]}) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(hf_dirs, tmp_path_factory):
    from megatron_hpt.conversion import convert_hf_to_megatron
    root = tmp_path_factory.mktemp("trained_export")
    data = _sft_data(str(root / "sft.jsonl"))
    steps = ["--micro-batch-size", "2", "--global-batch-size", "4", "--lr", "1e-2", "--train-iters", "2",
             "--seed", "3", "--clip-grad", "1.0"]
    runs, saves = [], {}
    for name, variant, layout in (("tp2", "qwen3", ["--tensor-model-parallel-size", "2"]),
                                  ("pp2", "qwen2_tied", ["--pipeline-model-parallel-size", "2"])):
        mg = str(root / f"{name}_converted")
        convert_hf_to_megatron(hf_dirs[variant], mg, progress=False)
        saves[name] = str(root / f"{name}_save")
        runs.append(["--hf-model", hf_dirs[variant], "--load", mg, "--finetune", "--save", saves[name],
                     "--data-path", data, "--seq-length", "16"] + layout + steps)
    saves["flags_dp2"] = str(root / "flags_save")
    runs.append(TINY_FLAGS + ["--seq-length", "32", "--save", saves["flags_dp2"]] + steps)
    per_rank = run_distributed(train_and_logits, 2, runs, TOKENS, timeout=900)
    logits = {}
    for i, name in enumerate(saves):
        got = [r[i] for r in per_rank if r[i][0] is not None]
        assert len(got) == 1, name
        logits[name], losses = got[0]
        assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses))), (name, losses)
    return saves, logits


@pytest.mark.parametrize("name,variant", [("tp2", "qwen3"), ("pp2", "qwen2_tied")])
def test_trained_hf_model_exports_with_the_trainers_logits(name, variant, trained, hf_dirs, tmp_path):
    from megatron_hpt.conversion.checkpoint import read_tensor_metadata, resolve_checkpoint_dir
    saves, logits = trained
    ckpt = resolve_checkpoint_dir(saves[name])
    assert ckpt.endswith("iter_0000002")
    assert any(k.startswith("optimizer.") for k in read_tensor_metadata(ckpt))  # a training checkpoint
    out = str(tmp_path / "hf")
    rc, err = _export(["--load", saves[name], "--save", out])
    assert rc == 0, err
    diff = (hf_logits(out, TOKENS) - logits[name]).abs().max().item()
    assert diff <= 1e-4, (name, diff)
    original, exported = read_safetensors_dir(hf_dirs[variant]), read_safetensors_dir(out)
    assert sorted(original) == sorted(exported)
    assert any(not torch.equal(original[n], exported[n]) for n in original)  # it did train
    cfg = json.load(open(os.path.join(out, "config.json")))
    src = json.load(open(os.path.join(hf_dirs[variant], "config.json")))
    assert cfg["model_type"] == variant.split("_")[0] and cfg["eos_token_id"] == src["eos_token_id"]
    from transformers import AutoTokenizer
    text = "w1 w2 w17"  # the run's tokenizer travelled with the checkpoint
    assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(hf_dirs[variant])(text)["input_ids"]


def test_model_from_megatron_flags_needs_and_checks_model_type(trained, tmp_path):
    saves, logits = trained
    rc, err = _export(["--load", saves["flags_dp2"], "--save", str(tmp_path / "a")])
    assert rc == 1 and "no model_type" in err and "--model-type" in err and "fits ['llama', 'mistral']" in err, err
    rc, err = _export(["--load", saves["flags_dp2"], "--save", str(tmp_path / "b"), "--model-type", "qwen3"])
    assert rc == 1 and "not a qwen3 model: qk_layernorm=False (qwen3 needs True)" in err, err
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")
    out = str(tmp_path / "llama")
    rc, err = _export(["--load", saves["flags_dp2"], "--save", out, "--model-type", "llama"])
    assert rc == 0, err
    diff = (hf_logits(out, TOKENS) - logits["flags_dp2"]).abs().max().item()
    assert diff <= 1e-4, diff
    from transformers import AutoTokenizer
    from megatron_hpt.data.tokenizer import build_char_tokenizer
    builtin = build_char_tokenizer()
    assert AutoTokenizer.from_pretrained(out)("12+3=")["input_ids"] == builtin("12+3=")["input_ids"]
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (builtin.bos_token_id, builtin.eos_token_id)
    assert json.load(open(os.path.join(out, "generation_config.json")))["eos_token_id"] == builtin.eos_token_id


def test_contradicting_model_type_is_refused(trained, tmp_path):
    saves, _ = trained
    rc, err = _export(["--load", saves["tp2"], "--save", str(tmp_path / "x"), "--model-type", "llama"])
    assert rc == 1 and "is a 'qwen3' model" in err, err
