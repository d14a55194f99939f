"""HF -> Megatron -> HF in one process: bitwise tensors, the same config, the tokenizer files."""
import json
import os

import pytest
import torch

from conversion_helpers import VARIANTS, read_safetensors_dir


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hf_megatron_hf_is_bitwise_identical(variant, hf_dirs, converted, tmp_path):
    from megatron_hpt.conversion import convert_megatron_to_hf
    out = str(tmp_path / "back")
    convert_megatron_to_hf(converted[variant], out, max_shard_size="40KB", progress=False)
    original, back = read_safetensors_dir(hf_dirs[variant]), read_safetensors_dir(out)
    assert sorted(back) == sorted(original)
    for name, t in original.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    with open(os.path.join(hf_dirs[variant], "config.json")) as f:
        src_cfg = json.load(f)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f) == src_cfg
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and sorted(index["weight_map"]) == sorted(original)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert os.path.isfile(os.path.join(out, name)), name


def test_converted_dir_layout(hf_dirs, converted):
    d = converted["qwen2_tied"]
    assert open(os.path.join(d, "latest_checkpointed_iteration.txt")).read() == "release"
    for name in ("model_shape.json", "hf_config.json", "conversion_args.json", "tokenizer/tokenizer.json",
                 "release/metadata.json", "release/common.pt", "release/.metadata"):
        assert os.path.exists(os.path.join(d, name)), name
    args = json.load(open(os.path.join(d, "conversion_args.json")))
    assert args["tensor_model_parallel_size"] == 2 and args["pipeline_model_parallel_size"] == 2
    assert not [f for f in os.listdir(os.path.dirname(d)) if ".tmp-" in f]  # no staging leftovers


def test_tied_qwen2_stays_tied(hf_dirs, converted, tmp_path):
    """Tied: no output layer in the checkpoint, no lm_head in the export, tied after loading."""
    from transformers import AutoModelForCausalLM
    from megatron_hpt.conversion import convert_megatron_to_hf
    from megatron_hpt.conversion.checkpoint import read_tensor_metadata
    meta = read_tensor_metadata(os.path.join(converted["qwen2_tied"], "release"))
    assert "output_layer.weight" not in meta and "embedding.word_embeddings.weight" in meta
    out = str(tmp_path / "back")
    convert_megatron_to_hf(converted["qwen2_tied"], out, progress=False)
    assert "lm_head.weight" not in read_safetensors_dir(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_output_loads_in_transformers_with_tokenizer(hf_dirs, converted, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from megatron_hpt.conversion import convert_megatron_to_hf
    out = str(tmp_path / "back")
    convert_megatron_to_hf(converted["qwen3"], out, progress=False)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("w1 w2")["input_ids"] == [4, 5]
    model = AutoModelForCausalLM.from_pretrained(out)
    ref = AutoModelForCausalLM.from_pretrained(hf_dirs["qwen3"])
    ids = torch.tensor([[4, 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_target_dtype_bf16(hf_dirs, tmp_path):
    from megatron_hpt.conversion import convert_hf_to_megatron, convert_megatron_to_hf
    convert_hf_to_megatron(hf_dirs["llama"], str(tmp_path / "mg"), target_params_dtype="bf16", progress=False)
    convert_megatron_to_hf(str(tmp_path / "mg"), str(tmp_path / "hf"), progress=False)
    original, back = read_safetensors_dir(hf_dirs["llama"]), read_safetensors_dir(str(tmp_path / "hf"))
    for name, t in original.items():
        assert back[name].dtype == torch.bfloat16 and torch.equal(back[name], t.to(torch.bfloat16)), name
    cfg = json.load(open(str(tmp_path / "hf" / "config.json")))
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
