"""Every bad input is one line naming the file/row/field/flag, before any process group, model or
rollout exists, and nothing is written (training/preflight.py). In-process: ``prepare`` is what
``train.run`` calls first; one real ``python -m megatron_hpt.train`` checks exit code 2 and stderr."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from megatron_hpt.arguments import ConfigError
from megatron_hpt.data.arithmetic import problems
from megatron_hpt.training import preflight
from training.common import TINY_MODEL

RUN = ["--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", "2", "--lr", "1e-3"]
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _prepare(extra, model=TINY_MODEL):
    return preflight.prepare(model + RUN + extra)


def _expect(extra, *fragments, model=TINY_MODEL):
    with pytest.raises(ConfigError) as e:
        _prepare(extra, model)
    msg = preflight.one_line(e.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in: {msg}"
    return msg


def _rows(n=8, **override):
    rows = [{"prompt": p.prompt, "solution": p.solution, "answer": p.answer}
            for p in problems(0, 0, n)]
    for i, row in override.items():
        rows[int(i.lstrip("r"))] = row
    return rows


def _jsonl(tmp_path, rows, name="d.jsonl"):
    path = str(tmp_path / name)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def _parquet(tmp_path, rows, name="d.parquet"):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = str(tmp_path / name)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ------------------------------------------------------------------ numeric flags

@pytest.mark.parametrize("flag,value,need", [
    ("--lr", "0", "--lr 0.0 is out of range: it must be > 0"),
    ("--lr", "-1e-3", "--lr -0.001 is out of range: it must be > 0"),
    ("--lr", "nan", "--lr nan is out of range"),
    ("--train-iters", "0", "--train-iters 0 is out of range: it must be >= 1"),
    ("--micro-batch-size", "0", "--micro-batch-size 0 is out of range"),
    ("--seed", "-5", "--seed -5 is out of range: it must be >= 0"),
    ("--save-interval", "0", "--save-interval 0 is out of range"),
    ("--adam-beta2", "1.0", "--adam-beta2 1.0 is out of range: it must be in [0, 1)"),
    ("--clip-grad", "-1", "--clip-grad -1.0 is out of range"),
    ("--rollout-top-p", "0", "--rollout-top-p 0.0 is out of range: it must be in (0, 1]"),
    ("--seq-length", "0", "--seq-length 0 is out of range"),
])
def test_numeric_flag_out_of_range(flag, value, need):
    _expect([f"{flag}={value}"], need)


def test_min_lr_above_lr():
    _expect(["--min-lr", "1e-2"], "--min-lr 0.01 is out of range: it must be >= 0 and <= --lr")


# ------------------------------------------------------------------ data files

def test_empty_parquet_file(tmp_path):
    path = str(tmp_path / "empty.parquet")
    open(path, "wb").close()
    _expect(["--data-path", path], f"{path}: the file is empty (0 bytes)")


def test_truncated_parquet_file(tmp_path):
    path = _parquet(tmp_path, _rows())
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    _expect(["--data-path", path], f"{path}: not a readable parquet file", "truncated")


def test_parquet_without_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = str(tmp_path / "none.parquet")
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    _expect(["--data-path", path], f"{path}: no usable rows")


def test_data_file_missing(tmp_path):
    _expect(["--data-path", str(tmp_path / "nope.jsonl")], "nope.jsonl: no such data file")


def test_data_file_not_utf8(tmp_path):
    path = str(tmp_path / "latin1.jsonl")
    with open(path, "wb") as f:
        f.write('{"prompt": "caf\u00e9", "answer": "1"}\n'.encode("latin-1"))
    _expect(["--data-path", path], f"{path}: not UTF-8 text")


def test_unknown_data_format(tmp_path):
    path = str(tmp_path / "d.csv")
    open(path, "w").write("prompt,answer\n")
    _expect(["--data-path", path], "unknown data format '.csv'")


def test_missing_answer_field(tmp_path):
    path = _jsonl(tmp_path, _rows(r3={"prompt": "1+1=", "solution": "2"}))
    _expect(["--data-path", path], f"{path}: row 3: no answer")


def test_missing_demonstration_for_sft(tmp_path):
    path = _jsonl(tmp_path, _rows(r5={"prompt": "1+1=", "answer": "2"}))
    _expect(["--data-path", path], f"{path}: row 5: no demonstration")


def test_prompt_longer_than_seq_length(tmp_path):
    path = _jsonl(tmp_path, _rows(r2={"prompt": "1+" * 30 + "1=", "solution": "#31", "answer": "31"}))
    _expect(["--data-path", path, "--loss-preset", "grpo", "--rollout-batch-size", "2",
             "--n-samples-per-prompt", "4"],
            f"{path}: row 2: field 'prompt' is 63 tokens, longer than --seq-length 32")


def test_prompt_plus_demonstration_longer_than_seq_length(tmp_path):
    path = _jsonl(tmp_path, _rows(r1={"prompt": "1+1=", "solution": "2" * 40, "answer": "2"}))
    _expect(["--data-path", path], f"{path}: row 1: prompt + field 'target/solution' + EOS is 46 "
            "tokens, more than --seq-length + 1 = 33")


def test_too_long_rows_are_skipped_and_counted(tmp_path, capsys):
    long_row = {"prompt": "1+" * 30 + "1=", "solution": "#31", "answer": "31"}
    path = _jsonl(tmp_path, _rows(10, r2=long_row, r7=long_row))
    *_, cfg, source = _prepare(["--data-path", path, "--data-skip-bad-rows"])
    assert len(source.records) == 8 and source.skipped == 2
    assert [r.row for r in source.records] == [0, 1, 3, 4, 5, 6, 8, 9]
    assert all(len(r.prompt_ids) <= cfg.seq_length for r in source.records)
    assert "2 bad rows skipped" in capsys.readouterr().out


def test_unicode_the_builtin_tokenizer_cannot_represent(tmp_path):
    path = _jsonl(tmp_path, _rows(r4={"prompt": "Combien font 2+2 ? Réponse\u00a0:", "solution": "#4",
                                      "answer": "4"}))
    _expect(["--data-path", path], f"{path}: row 4: field 'prompt' has characters the tokenizer "
            "cannot represent: 'é' (U+00E9), '\\xa0' (U+00A0)", "--hf-model")


def test_emoji_in_a_demonstration(tmp_path):
    path = _jsonl(tmp_path, _rows(r0={"prompt": "2+2=", "solution": "4 \U0001F600", "answer": "4"}))
    _expect(["--data-path", path], f"{path}: row 0: field 'target/solution'", "U+1F600")


def test_unrepresentable_rows_skipped_with_the_flag(tmp_path):
    path = _jsonl(tmp_path, _rows(r0={"prompt": "2+2=\u00e9", "solution": "#4", "answer": "4"}))
    *_, source = _prepare(["--data-path", path, "--data-skip-bad-rows"])
    assert source.skipped == 1 and len(source.records) == 7


def test_eval_data_prompt_longer_than_seq_length(tmp_path):
    good = _jsonl(tmp_path, _rows(), "train.jsonl")
    bad = _jsonl(tmp_path, _rows(r6={"prompt": "9" * 40, "answer": "9"}), "eval.jsonl")
    _expect(["--data-path", good, "--eval-data-path", bad, "--eval-interval", "1"],
            f"{bad}: row 6: field 'prompt' is 41 tokens")


def test_builtin_data_with_too_short_seq_length():
    model = [a if a != "32" else "16" for a in TINY_MODEL]  # --seq-length 16
    _expect([], "--seq-length 16 is too short for builtin:arithmetic", "--seq-length >= 26",
            model=model)


# ------------------------------------------------------------------ --save

def test_save_path_is_a_file(tmp_path):
    path = tmp_path / "ckpt"
    path.write_text("not a directory")
    _expect(["--save", str(path)], f"--save {path}: exists and is not a directory")


def test_save_path_below_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    _expect(["--save", str(tmp_path / "f" / "ckpt")], "is a file, so the directory cannot be created")


def test_save_dir_read_only(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only file system
        target = "/sys/megatron_hpt_save"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = str(ro / "ckpt")
    _expect(["--save", target], f"--save {target}: cannot write in", "choose a writable directory")
    assert not os.path.exists(target)


def test_save_disk_without_room_for_one_checkpoint(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 6, 10 ** 6 - 1000, 1000))
    msg = _expect(["--save", str(tmp_path / "ckpt")], "GB free on its disk, one checkpoint needs about")
    assert not (tmp_path / "ckpt").exists() and os.listdir(tmp_path) == [], msg


def test_checkpoint_size_estimate_counts_every_parameter():
    """Independent count for TINY_MODEL (RMSNorm, SwiGLU, no bias, untied, RoPE, vocab 128)."""
    *_, cfg, _ = _prepare([])
    h, ffn, heads, groups, kv, v, layers = 64, 128, 4, 2, 16, 128, 2
    layer = h * (heads + 2 * groups) * kv + heads * kv * h + h * 2 * ffn + ffn * h + 2 * h
    params = layers * layer + h + 2 * v * h
    assert preflight.num_parameters(cfg.shape) == params
    assert preflight.checkpoint_bytes(cfg) == params * (4 + 8)  # fp32 weights + Adam's two moments


# ------------------------------------------------------------------ --load

def _fake_checkpoint(root, shape, tracker="2"):
    """A checkpoint directory as the trainer leaves it (tensors are not read by the checks)."""
    d = root / f"iter_{int(tracker):07d}"
    d.mkdir(parents=True)
    (d / "metadata.json").write_text("{}")
    (d / "model_shape.json").write_text(shape.to_json())
    (root / "latest_checkpointed_iteration.txt").write_text(tracker)
    return str(root)


_SHAPE = []


def _tiny_shape():
    if not _SHAPE:
        *_, cfg, _ = _prepare([])
        _SHAPE.append(cfg.shape)
    return _SHAPE[0]


def test_load_missing(tmp_path):
    _expect(["--load", str(tmp_path / "nope")], "--load", "nope: no such directory")


def test_load_empty_directory(tmp_path):
    _expect(["--load", str(tmp_path)], "no complete checkpoint: the directory is empty")


def test_load_without_tracker(tmp_path):
    (tmp_path / "iter_0000002").mkdir()
    _expect(["--load", str(tmp_path)], "no complete checkpoint: it has no "
            "latest_checkpointed_iteration.txt")


def test_load_with_only_an_unfinished_save(tmp_path):
    (tmp_path / "iter_0000004.tmp").mkdir()
    _expect(["--load", str(tmp_path)], "only unfinished saves (*.tmp) are there")


def test_load_tracker_with_garbage(tmp_path):
    _fake_checkpoint(tmp_path, _tiny_shape())
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("last")
    _expect(["--load", str(tmp_path)], "holds 'last', not an iteration number")


def test_load_tracker_names_a_missing_iteration(tmp_path):
    _fake_checkpoint(tmp_path, _tiny_shape())
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("9")
    _expect(["--load", str(tmp_path)], "names iter_0000009, which is missing or incomplete")


def test_load_caught_between_the_two_renames_of_a_resave(tmp_path):
    _fake_checkpoint(tmp_path, _tiny_shape())
    os.rename(tmp_path / "iter_0000002", tmp_path / "iter_0000002.old")
    _expect(["--load", str(tmp_path)], "rename iter_0000002.old to iter_0000002")


def test_load_is_a_file(tmp_path):
    (tmp_path / "ckpt").write_text("x")
    _expect(["--load", str(tmp_path / "ckpt")], "is a file, not a checkpoint directory")


def _without(flags, *names):
    return [a for a in flags if a not in names]


def _with(flags, flag, value):
    out = list(flags)
    out[out.index(flag) + 1] = value
    return out


MISMATCHES = {
    "vocab_size": (TINY_MODEL + ["--vocab-size", "256"], "vocab_size: checkpoint 128, this run 256"),
    "positions": (_with(TINY_MODEL, "--position-embedding-type", "learned_absolute"),
                  "position_embedding_type: checkpoint rope, this run learned_absolute"),
    "norm": (_with(TINY_MODEL, "--normalization", "LayerNorm"),
             "normalization: checkpoint RMSNorm, this run LayerNorm"),
    "bias": (_without(TINY_MODEL, "--disable-bias-linear"),
             "add_bias_linear: checkpoint False, this run True"),
    "tied": (_without(TINY_MODEL, "--untie-embeddings-and-output-weights"),
             "untie_embeddings_and_output_weights: checkpoint True, this run False"),
    "hidden": (_with(TINY_MODEL, "--hidden-size", "128"), "hidden_size: checkpoint 64, this run 128"),
    "layers": (_with(TINY_MODEL, "--num-layers", "4"), "num_layers: checkpoint 2, this run 4"),
    "ffn": (_with(TINY_MODEL, "--ffn-hidden-size", "256"), "ffn_hidden_size: checkpoint 128, this run 256"),
    "heads": (_with(TINY_MODEL, "--num-attention-heads", "8"), "num_attention_heads: checkpoint 4, this run 8"),
    "groups": (_with(TINY_MODEL, "--num-query-groups", "4"), "num_query_groups: checkpoint 2, this run 4"),
    "swiglu": (_without(TINY_MODEL, "--swiglu"), "swiglu: checkpoint True, this run False"),
    "qkv_bias": (TINY_MODEL + ["--add-qkv-bias"], "add_qkv_bias: checkpoint False, this run True"),
    "qk_norm": (TINY_MODEL + ["--qk-layernorm"], "qk_layernorm: checkpoint False, this run True"),
    "rope_base": (TINY_MODEL + ["--rotary-base", "500000"], "rotary_base: checkpoint 10000.0, this run 500000.0"),
}


@pytest.mark.parametrize("kind", sorted(MISMATCHES))
def test_load_shape_mismatch_names_each_field(tmp_path, kind):
    model, need = MISMATCHES[kind]
    root = _fake_checkpoint(tmp_path, _tiny_shape())
    for extra in ([], ["--finetune"]):  # --finetune does not waive it: the tensors would be wrong
        _expect(["--load", root] + extra, f"--load {root}: the checkpoint's model", need, model=model)


def test_load_mismatch_lists_every_difference(tmp_path):
    root = _fake_checkpoint(tmp_path, _tiny_shape())
    msg = _expect(["--load", root], model=_with(_with(TINY_MODEL, "--hidden-size", "128"),
                                                "--num-layers", "3"))
    assert "hidden_size: checkpoint 64, this run 128" in msg and "num_layers: checkpoint 2" in msg
    assert "kv_channels: checkpoint 16, this run 32" in msg


def test_load_of_a_matching_checkpoint_passes(tmp_path):
    shape = _tiny_shape()
    root = _fake_checkpoint(tmp_path, dataclasses.replace(shape, hf_model_type="llama"))
    assert _prepare(["--load", root, "--finetune"])[3].load == root


def test_hf_model_directory_missing(tmp_path):
    _expect(["--hf-model", str(tmp_path / "nope")], "--hf-model", "nope")


# ------------------------------------------------------------------ the real command

def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path):
    data = _jsonl(tmp_path, _rows(r1={"prompt": "2+2=\u00e9", "solution": "#4", "answer": "4"}))
    save = tmp_path / "ckpt"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "megatron_hpt.train", *TINY_MODEL, *RUN,
                           "--data-path", data, "--save", str(save)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"megatron_hpt.train: error: {data}: row 1: field 'prompt' has characters the "
                     "tokenizer cannot represent: 'é' (U+00E9); use --hf-model with a tokenizer "
                     "that covers them, remove the row, or pass --data-skip-bad-rows"], proc.stderr
    assert "Traceback" not in proc.stderr and not save.exists()
    assert sorted(os.listdir(tmp_path)) == ["d.jsonl"]
