"""tools/evaluate.py refuses bad inputs before any process group or model: one ``error:`` line
naming the file/row/field, exit code 2."""
import json
import os
import sys

import pytest

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools")


def _tool(argv, monkeypatch):
    sys.path.insert(0, TOOLS)
    import evaluate as tool
    from megatron_hpt.training import distributed
    monkeypatch.setattr(distributed, "initialize",
                        lambda *a, **k: pytest.fail("process groups were started"))
    return tool.main(argv)


def _ckpt(tmp_path, positions=64, shape_file=True):
    """A checkpoint directory as training leaves it (the tensors are not read by the checks)."""
    from megatron_hpt.models.shape import ModelShape
    root = tmp_path / "ckpt"
    (root / "iter_0000002").mkdir(parents=True)
    (root / "latest_checkpointed_iteration.txt").write_text("2")
    if shape_file:
        shape = ModelShape(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                           num_query_groups=2, vocab_size=128, max_position_embeddings=positions)
        (root / "model_shape.json").write_text(shape.to_json())
    return str(root)


def _bench(tmp_path, prompts, name="bench.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"prompt": p, "answer": "1"}, ensure_ascii=False) + "\n"
                            for p in prompts))
    return str(path)


def _error(capsys):
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_prompt_longer_than_the_models_positions(tmp_path, capsys, monkeypatch):
    bench = _bench(tmp_path, ["1+1=", "1" * 70])
    assert _tool(["--load", _ckpt(tmp_path), "--benchmark", bench], monkeypatch) == 2
    assert f"{bench}: row 1: field 'prompt' is 71 tokens; the model has 64 positions" in _error(capsys)


def test_missing_model_shape_json(tmp_path, capsys, monkeypatch):
    root = _ckpt(tmp_path, shape_file=False)
    assert _tool(["--load", root, "--benchmark", _bench(tmp_path, ["1+1="])], monkeypatch) == 2
    assert f"{root}/model_shape.json: missing" in _error(capsys)


def test_load_without_a_tracker(tmp_path, capsys, monkeypatch):
    root = tmp_path / "empty"
    root.mkdir()
    assert _tool(["--load", str(root), "--benchmark", _bench(tmp_path, ["1+1="])], monkeypatch) == 2
    assert "latest_checkpointed_iteration.txt: no tracker file" in _error(capsys)


def test_unicode_the_builtin_tokenizer_cannot_represent(tmp_path, capsys, monkeypatch):
    bench = _bench(tmp_path, ["1+1=", "Wie viel ist 1+1? \u00fcberlege"])
    assert _tool(["--load", _ckpt(tmp_path), "--benchmark", bench], monkeypatch) == 2
    assert f"{bench}: row 1: field 'prompt' has characters the tokenizer cannot represent: " \
           "'ü' (U+00FC)" in _error(capsys)


def test_empty_benchmark_file(tmp_path, capsys, monkeypatch):
    bench = tmp_path / "empty.jsonl"
    bench.write_text("")
    assert _tool(["--load", _ckpt(tmp_path), "--benchmark", str(bench)], monkeypatch) == 2
    assert f"{bench}: the file is empty" in _error(capsys)
