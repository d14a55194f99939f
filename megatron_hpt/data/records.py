"""Prompt / demonstration / answer records from the formats users already have (SPEC §7).

Accepted as-is, by file suffix:

- ``.parquet`` (verl / LUFFY / HPT RL format): ``prompt`` (a string, or chat turns
  ``[{role, content}, ...]``), ``target`` (the demonstration: a string or chat turns, optional),
  ``reward_model.ground_truth`` (the answer), optional ``data_source``;
- ``.jsonl`` (one object per line) and ``.json`` (an array of objects): the same fields, or plain
  ``{prompt, answer, solution}`` (benchmark files write the answer as ``\\boxed{...}``).

A bad row (not an object, no prompt, no answer, a field of the wrong type) raises ``DataError``
naming the file, the row and the field; with ``skip_bad_rows=True`` it is skipped and counted
(``RecordSet.skipped``) instead. Only data is read: no pickles, no code.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

Turns = List[Dict[str, str]]


class DataError(ValueError):
    """A record that cannot be used; the message names the file, the row and the field."""


@dataclass
class Record:
    prompt: Union[str, Turns]
    """The question: plain text, or chat turns to render with the tokenizer's chat template."""
    answer: str
    """Ground truth for the verifier (``\\boxed{}`` wrappers are kept; the grader parses them)."""
    demonstration: Optional[str] = None
    """The expert solution (SFT rows, demo rows of hybrid presets), or None."""
    source: str = ""
    """``data_source`` when the file has one (reported per source by evaluation)."""
    row: int = -1
    """Index of the row in its file (error messages name it)."""
    prompt_ids: Optional[List[int]] = None
    """The rendered prompt's token ids, once the start-up checks have tokenized it."""


@dataclass
class RecordSet:
    path: str
    records: List[Record] = field(default_factory=list)
    skipped: int = 0
    """Rows skipped because they were bad (only with skip_bad_rows=True)."""

    def __len__(self) -> int:
        return len(self.records)


def _rows(path: str) -> List[Any]:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".parquet", ".jsonl", ".json"):
        raise DataError(f"{path}: unknown data format {suffix!r}; use .parquet, .jsonl or .json")
    try:
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: the file is empty (0 bytes); give a file with rows")
        return _read_rows(path, suffix)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    except OSError as e:  # unreadable (permissions, a directory, I/O error)
        raise DataError(f"{path}: cannot read the file: {e.strerror or e}") from None


def _read_rows(path: str, suffix: str) -> List[Any]:
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable parquet file ({e}); the file is truncated "
                            "or not parquet: rewrite it") from None
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    rows.append(DataError(f"{path}: row {len(rows)} (line {i + 1}): not JSON: {e.msg}"))
        return rows
    if suffix == ".json":
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: not JSON: {e.msg} (line {e.lineno})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
        return data


def _text_or_turns(value: Any, where: str, name: str) -> Union[str, Turns]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field {name!r} is empty")
        return value
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(t, dict) and isinstance(t.get("content"), str) and isinstance(t.get("role"), str)
            for t in value):
        return [{"role": t["role"], "content": t["content"]} for t in value]
    raise DataError(f"{where}: field {name!r} must be a string or a list of "
                    f"{{role, content}} turns, got {type(value).__name__}")


def _answer(row: Dict[str, Any], where: str) -> str:
    rm = row.get("reward_model")
    if isinstance(rm, dict) and rm.get("ground_truth") is not None:
        value, name = rm["ground_truth"], "reward_model.ground_truth"
    elif row.get("answer") is not None:
        value, name = row["answer"], "answer"
    else:
        raise DataError(f"{where}: no answer (field 'reward_model.ground_truth' or 'answer')")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
    return value


def _demonstration(row: Dict[str, Any], where: str) -> Optional[str]:
    for name in ("target", "solution"):
        value = row.get(name)
        if value is None:
            continue
        text = _text_or_turns(value, where, name)
        if isinstance(text, list):  # the assistant turns of a multi-turn target
            text = "".join(t["content"] for t in text if t["role"] == "assistant") or \
                "".join(t["content"] for t in text)
        return text
    return None


def parse_record(row: Any, path: str, index: int) -> Record:
    where = f"{path}: row {index}"
    if isinstance(row, DataError):
        raise row
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    if row.get("prompt") is None:
        raise DataError(f"{where}: no field 'prompt'")
    source = row.get("data_source") or ""
    return Record(prompt=_text_or_turns(row["prompt"], where, "prompt"), answer=_answer(row, where),
                  demonstration=_demonstration(row, where),
                  source=source if isinstance(source, str) else str(source), row=index)


def read_records(path: str, skip_bad_rows: bool = False, need_demonstrations: bool = False
                 ) -> RecordSet:
    """All records of ``path``. ``need_demonstrations``: a row without ``target``/``solution``
    is bad (SFT and hybrid presets train on them)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such data file")
    out = RecordSet(path)
    for i, row in enumerate(_rows(path)):
        try:
            rec = parse_record(row, path, i)
            if need_demonstrations and rec.demonstration is None:
                raise DataError(f"{path}: row {i}: no demonstration (field 'target' or 'solution'), "
                                "which this preset trains on")
        except DataError:
            if not skip_bad_rows:
                raise
            out.skipped += 1
            continue
        out.records.append(rec)
    if not out.records:
        raise DataError(f"{path}: no usable rows ({out.skipped} skipped)")
    return out


def render_prompt(prompt: Union[str, Turns], tokenizer) -> List[int]:
    """Token ids of a prompt: chat turns through the tokenizer's chat template (with the
    generation prompt) when it has one, else the text after the BOS token."""
    if isinstance(prompt, list):
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) else ids)
        prompt = "\n".join(t["content"] for t in prompt)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer.encode(prompt, add_special_tokens=False)


def epoch_order(n: int, seed: int, epoch: int) -> Sequence[int]:
    """Row order of one pass over the data: a permutation from (seed, epoch), same on every rank."""
    import numpy as np
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()
