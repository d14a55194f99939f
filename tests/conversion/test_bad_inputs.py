"""The converters' answer to bad inputs and full disks: one ``error:`` line, exit code 1, and no
output directory (nor staging leftovers) when the disk fills mid-write."""
import errno
import importlib.util
import json
import os
import shutil

import pytest

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools")


def _cli(name):
    spec = importlib.util.spec_from_file_location(f"{name}_cli", os.path.join(TOOLS, f"{name}.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def _only_error_line(capsys):
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _no_leftovers(parent, target):
    assert not os.path.exists(target)
    assert not [f for f in os.listdir(parent) if ".tmp-" in f or ".old-" in f]


def _enospc(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


@pytest.mark.parametrize("field", ["intermediate_size", "num_hidden_layers", "vocab_size"])
def test_config_json_missing_a_field(hf_dirs, tmp_path, capsys, field):
    d = str(tmp_path / "hf")
    shutil.copytree(hf_dirs["llama"], d)
    cfg_path = os.path.join(d, "config.json")
    cfg = json.load(open(cfg_path))
    del cfg[field]
    json.dump(cfg, open(cfg_path, "w"))
    out = str(tmp_path / "mg")
    assert _cli("convert_hf_to_megatron").main(["--hf-dir", d, "--save", out, "--no-progress"]) == 1
    line = _only_error_line(capsys)
    assert f"{cfg_path}: field(s) {field} missing or not a positive integer" in line
    _no_leftovers(str(tmp_path), out)


def test_disk_full_while_converting_to_megatron(hf_dirs, tmp_path, capsys, monkeypatch):
    from megatron_hpt.conversion import hf_to_megatron

    def full_disk(ckpt_dir, *args, **kwargs):
        os.makedirs(ckpt_dir, exist_ok=True)
        with open(os.path.join(ckpt_dir, "__0_0.distcp"), "wb") as f:
            f.write(b"\0" * 4096)  # what a writer leaves when the disk fills
        raise _enospc(os.path.join(ckpt_dir, "__0_0.distcp"))
    monkeypatch.setattr(hf_to_megatron, "save_streaming", full_disk)
    out = str(tmp_path / "mg")
    assert _cli("convert_hf_to_megatron").main(
        ["--hf-dir", hf_dirs["llama"], "--save", out, "--no-progress"]) == 1
    line = _only_error_line(capsys)
    assert "No space left on device" in line and line.endswith(f"nothing was written to {out}")
    _no_leftovers(str(tmp_path), out)


def test_disk_full_while_exporting_to_hf(hf_dirs, tmp_path, capsys, monkeypatch):
    from megatron_hpt.conversion import convert_hf_to_megatron, safetensors_io
    mg = str(tmp_path / "mg")
    convert_hf_to_megatron(hf_dirs["llama"], mg, progress=False)
    real, shards = safetensors_io.save_file, []

    def full_after_one_shard(tensors, path, metadata=None):
        if shards:
            with open(path, "wb") as f:
                f.write(b"\0" * 100)
            raise _enospc(path)
        shards.append(path)
        real(tensors, path, metadata=metadata)
    monkeypatch.setattr(safetensors_io, "save_file", full_after_one_shard)
    out = str(tmp_path / "hf_out")
    assert _cli("convert_megatron_to_hf").main(
        ["--load", mg, "--save", out, "--max-shard-size", "20KB", "--no-progress"]) == 1
    assert shards, "the export wrote no shard before the disk filled: make the shards smaller"
    line = _only_error_line(capsys)
    assert "No space left on device" in line and line.endswith(f"nothing was written to {out}")
    _no_leftovers(str(tmp_path), out)
