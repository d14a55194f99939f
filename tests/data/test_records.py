"""Data files as users have them (SPEC §7), the math reward, and training from a file."""
import json
import os

import pytest

from megatron_hpt.data.prompts import PromptSource
from megatron_hpt.data.records import DataError, read_records, render_prompt
from megatron_hpt.data.tokenizer import build_char_tokenizer
from megatron_hpt.rewards import arithmetic_reward, math_reward, reward_fn

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "benchmarks")


def _bench(name):
    path = os.path.join(BENCH, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} not present (../shared/data/benchmarks)")
    return path


def test_benchmark_json_array():
    data = read_records(_bench("AIME24.json"))
    assert len(data) == 30 and data.skipped == 0
    first = data.records[0]
    assert first.answer == "\\boxed{204}" and first.demonstration is None
    assert isinstance(first.prompt, str) and first.prompt.startswith("Every morning Aya")


def test_verl_parquet_with_chat_turns():
    data = read_records(_bench("luffy_valid.parquet"))
    assert len(data) == 2019
    rec = data.records[0]
    assert rec.source == "aime" and rec.answer == "204"
    assert isinstance(rec.prompt, list) and {t["role"] for t in rec.prompt} <= {"system", "user"}
    # no chat template on the char tokenizer: the turns' contents are joined after BOS
    tok = build_char_tokenizer()
    ids = render_prompt([{"role": "user", "content": "1+2="}], tok)
    assert ids == [tok.bos_token_id] + tok.encode("1+2=", add_special_tokens=False)


def _write_jsonl(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


GOOD = {"prompt": "12+34=", "solution": "2+4=6;1+3=4#46", "answer": "46"}


@pytest.mark.parametrize("bad, field", [
    ({"solution": "x", "answer": "1"}, "no field 'prompt'"),
    ({"prompt": "1+1=", "solution": "x"}, "no answer"),
    ({"prompt": 7, "answer": "1"}, "field 'prompt' must be a string"),
    ({"prompt": "1+1=", "answer": ""}, "field 'answer' must be a non-empty string"),
    ("{not json", "not JSON"),
    ([1, 2], "expected an object"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, bad, field):
    path = _write_jsonl(tmp_path, [GOOD, bad, GOOD])
    with pytest.raises(DataError) as e:
        read_records(path)
    assert f"{path}: row 1" in str(e.value) and field in str(e.value)
    skipped = read_records(path, skip_bad_rows=True)
    assert len(skipped) == 2 and skipped.skipped == 1


def test_missing_demonstration_is_bad_only_when_needed(tmp_path):
    path = _write_jsonl(tmp_path, [GOOD, {"prompt": "1+1=", "answer": "2"}])
    assert len(read_records(path)) == 2
    with pytest.raises(DataError, match="row 1: no demonstration"):
        read_records(path, need_demonstrations=True)
    with pytest.raises(DataError, match="unknown data format '.csv'"):
        read_records(_write_jsonl(tmp_path, [GOOD], "d.csv"))


def test_file_order_is_a_seeded_permutation_per_pass(tmp_path):
    rows = [dict(GOOD, answer=str(i)) for i in range(5)]
    src = PromptSource(_write_jsonl(tmp_path, rows), build_char_tokenizer(), seed=3)
    first, second = src.items(0, 5), src.items(5, 5)
    assert sorted(it.answer for it in first) == [str(i) for i in range(5)]
    assert sorted(it.answer for it in second) == [str(i) for i in range(5)]
    again = PromptSource(_write_jsonl(tmp_path, rows), build_char_tokenizer(), seed=3)
    assert [it.answer for it in again.items(3, 4)] == [it.answer for it in first[3:] + second[:2]]


def test_math_reward_grades_final_answers():
    assert math_reward("so the walk takes \\boxed{204} minutes", "\\boxed{204}") == 1.0
    assert math_reward("The answer is \\boxed{204}.", "204") == 1.0
    assert math_reward("\\boxed{0.5}", "\\frac{1}{2}") == 1.0
    assert math_reward("\\boxed{205}", "204") == 0.0
    assert math_reward("no answer here", "204") == 0.0
    assert arithmetic_reward("2+4=6;1+3=4#46", "46") == 1.0 and arithmetic_reward("#47", "46") == 0.0
    with pytest.raises(ValueError, match="--reward-type"):
        reward_fn("exact")


def test_sft_trains_from_a_jsonl_file(tmp_path):
    from dist_utils import run_distributed
    from training.common import TINY_MODEL, train
    from megatron_hpt.data.arithmetic import problems
    rows = [{"prompt": p.prompt, "solution": p.solution, "answer": p.answer}
            for p in problems(0, 0, 12)]
    path = _write_jsonl(tmp_path, rows)
    metrics = run_distributed(train, 1, TINY_MODEL + [
        "--data-path", path, "--micro-batch-size", "4", "--global-batch-size", "8",
        "--train-iters", "2", "--eval-data-path", path, "--eval-interval", "2"])[0]
    assert len(metrics) == 2 and all(m["lm loss"] > 0 for m in metrics)
    assert 0.0 <= metrics[-1]["eval greedy accuracy"] <= 1.0


def test_bad_data_file_stops_before_anything_is_allocated(tmp_path, capsys, monkeypatch):
    import megatron_hpt.train as train_module
    from training.common import TINY_MODEL
    path = _write_jsonl(tmp_path, [GOOD, {"prompt": "1+1="}])
    monkeypatch.setattr(train_module.distributed, "initialize",
                        lambda *a, **k: pytest.fail("process groups were started"))
    assert train_module.main(TINY_MODEL + ["--data-path", path, "--micro-batch-size", "2",
                                           "--train-iters", "1"]) == 2
    assert f"{path}: row 1: no answer" in capsys.readouterr().err
