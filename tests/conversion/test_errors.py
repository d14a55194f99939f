"""Broken inputs give clear errors naming the culprit, and leave nothing half-written."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_hpt.conversion import convert_hf_to_megatron, convert_megatron_to_hf


def _copy(src, tmp_path, name="hf"):
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


def _edit_weights(hf_dir, edit):
    path = os.path.join(hf_dir, "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _no_leftovers(tmp_path, target):
    assert not os.path.exists(target)
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f or ".old-" in f]


def test_unsupported_model_type(hf_dirs, tmp_path):
    d = _copy(hf_dirs["llama"], tmp_path)
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["model_type"] = "gpt2"
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        convert_hf_to_megatron(d, str(tmp_path / "out"), progress=False)
    _no_leftovers(tmp_path, str(tmp_path / "out"))


def test_missing_and_extra_tensors_are_named(hf_dirs, tmp_path):
    d = _copy(hf_dirs["qwen2"], tmp_path)

    def edit(t):
        del t["model.layers.1.self_attn.k_proj.bias"]
        t["model.layers.1.self_attn.rotary.inv_freq"] = torch.zeros(8)
    _edit_weights(d, edit)
    with pytest.raises(ValueError) as e:
        convert_hf_to_megatron(d, str(tmp_path / "out"), progress=False)
    assert "missing tensors ['model.layers.1.self_attn.k_proj.bias']" in str(e.value)
    assert "unexpected tensors ['model.layers.1.self_attn.rotary.inv_freq']" in str(e.value)
    _no_leftovers(tmp_path, str(tmp_path / "out"))


def test_shape_mismatch_names_tensor_and_both_shapes(hf_dirs, tmp_path):
    d = _copy(hf_dirs["llama"], tmp_path)
    _edit_weights(d, lambda t: t.__setitem__("model.layers.0.mlp.up_proj.weight", torch.zeros(95, 64)))
    with pytest.raises(ValueError, match=r"shape mismatch for model.layers.0.mlp.up_proj.weight: "
                                         r"expected \(96, 64\), got \(95, 64\)"):
        convert_hf_to_megatron(d, str(tmp_path / "out"), progress=False)


@pytest.mark.parametrize("tp,pp,needle", [
    (8, 1, "num_attention_heads (4) is not divisible by TP=8"),
    (4, 1, "num_query_groups (num_key_value_heads) (2) is not divisible by TP=4"),
    (1, 3, "num_layers (2) is not divisible by PP=3"),
])
def test_parallel_sizes_that_do_not_divide(hf_dirs, tmp_path, tp, pp, needle):
    with pytest.raises(ValueError) as e:
        convert_hf_to_megatron(hf_dirs["llama"], str(tmp_path / "out"), tp, pp, progress=False)
    assert needle in str(e.value)


def test_truncated_safetensors_names_the_file(hf_dirs, tmp_path):
    d = _copy(hf_dirs["llama"], tmp_path)
    path = os.path.join(d, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated or corrupt safetensors file"):
        convert_hf_to_megatron(d, str(tmp_path / "out"), progress=False)
    _no_leftovers(tmp_path, str(tmp_path / "out"))


def test_corrupt_header_names_the_file(hf_dirs, tmp_path):
    d = _copy(hf_dirs["llama"], tmp_path)
    with open(os.path.join(d, "model.safetensors"), "r+b") as f:
        f.seek(8)
        f.write(b"{garbage")
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated or corrupt"):
        convert_hf_to_megatron(d, str(tmp_path / "out"), progress=False)


def test_pickle_checkpoints_are_refused(hf_dirs, tmp_path):
    d = _copy(hf_dirs["llama"], tmp_path)
    os.remove(os.path.join(d, "model.safetensors"))
    torch.save({}, os.path.join(d, "pytorch_model.bin"))
    with pytest.raises(FileNotFoundError, match="pickle checkpoints are not loaded"):
        convert_hf_to_megatron(d, str(tmp_path / "out"), progress=False)


def test_non_empty_output_needs_overwrite(hf_dirs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        convert_hf_to_megatron(hf_dirs["llama"], str(out), progress=False)
    assert (out / "precious.txt").read_text() == "keep me"
    convert_hf_to_megatron(hf_dirs["llama"], str(out), overwrite=True, progress=False)
    assert not (out / "precious.txt").exists() and (out / "release").is_dir()
    back = tmp_path / "back"
    back.mkdir()
    (back / "x").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_megatron_to_hf(str(out), str(back), progress=False)


def test_failure_mid_write_leaves_nothing(hf_dirs, tmp_path, monkeypatch):
    """An error after part of the checkpoint is written removes the staging dir; no target."""
    from megatron_hpt.conversion import mapping

    calls = []
    original = mapping.GatedMLP.to_megatron

    def failing(self, tensors, shape):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return original(self, tensors, shape)
    monkeypatch.setattr(mapping.GatedMLP, "to_megatron", failing)
    target = str(tmp_path / "out")
    with pytest.raises(OSError, match="disk full"):
        convert_hf_to_megatron(hf_dirs["llama"], target, progress=False)
    _no_leftovers(tmp_path, target)


def test_megatron_checkpoint_missing_tensors_are_named(converted, tmp_path):
    d = _copy(converted["llama"], tmp_path, "mg")
    shape = json.load(open(os.path.join(d, "model_shape.json")))
    shape.update(qk_layernorm=True, hf_model_type="qwen3", num_layers=3)
    json.dump(shape, open(os.path.join(d, "model_shape.json"), "w"))
    with pytest.raises(ValueError) as e:
        convert_megatron_to_hf(d, str(tmp_path / "back"), progress=False)
    msg = str(e.value)
    assert "missing tensors ['decoder.layers.self_attention.k_layernorm.weight'" in msg
    assert ("shape mismatch for decoder.layers.mlp.linear_fc1.weight: expected (3, 192, 64), got (2, 192, 64)"
            in msg)
    _no_leftovers(tmp_path, str(tmp_path / "back"))


def test_megatron_tracker_errors(converted, tmp_path):
    d = _copy(converted["llama"], tmp_path, "mg")
    with open(os.path.join(d, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("42")
    with pytest.raises(FileNotFoundError, match="iter_0000042: named by"):
        convert_megatron_to_hf(d, str(tmp_path / "back"), progress=False)


def test_cli_reports_errors_with_exit_code(hf_dirs, tmp_path, capsys):
    import importlib.util
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(
        "convert_hf_to_megatron_cli", os.path.join(here, "..", "..", "tools", "convert_hf_to_megatron.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    rc = cli.main(["--hf-dir", hf_dirs["llama"], "--save", str(tmp_path / "o"),
                   "--tensor-model-parallel-size", "3", "--no-progress"])
    assert rc == 1 and "not divisible by TP=3" in capsys.readouterr().err
