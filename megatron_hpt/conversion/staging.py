"""Output directories that appear whole or not at all, and the files copied beside the weights."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator, List

#: tokenizer (and generation) files carried from the HF dir into ``SAVE/tokenizer/`` and back
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
                   "generation_config.json")


@contextlib.contextmanager
def staged_output(target: str, overwrite: bool) -> Iterator[str]:
    """Yield a fresh temporary directory next to ``target``; on success it replaces ``target`` by a
    rename, on any error it is removed. Refuses a non-empty ``target`` unless ``overwrite``."""
    target = os.path.abspath(target)
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise FileExistsError(f"{target}: exists and is not a directory")
        if os.listdir(target) and not overwrite:
            raise FileExistsError(f"{target}: output directory is not empty (pass --overwrite to replace it)")
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    try:
        yield tmp
        old = None
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=parent)
            os.rename(target, os.path.join(old, "x"))
        os.rename(tmp, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_tokenizer_files(src: str, dst: str) -> List[str]:
    """Copy the tokenizer/generation files present in ``src`` to ``dst``; returns their names."""
    os.makedirs(dst, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        path = os.path.join(src, name)
        if os.path.isfile(path):
            shutil.copy2(path, os.path.join(dst, name))
            copied.append(name)
    return copied
