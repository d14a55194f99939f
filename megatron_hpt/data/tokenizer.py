"""Tokenizers: a Hugging Face tokenizer from a model directory, or the character-level tokenizer
the project builds (with the ``tokenizers`` library) for its built-in tasks."""
from __future__ import annotations

import os

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

#: Characters of the built-in tasks: digits, operators, separators, letters for worked solutions.
BUILTIN_CHARS = "0123456789+-*=;#,. ()abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:?\n"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character of ``BUILTIN_CHARS`` plus <pad>/<bos>/<eos>/<unk> (ids 0-3)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in BUILTIN_CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


def load_tokenizer(path_or_builtin: str = "builtin:char", trust_remote_code: bool = False):
    """``builtin:char`` or a directory with Hugging Face tokenizer files (never from a hub)."""
    if path_or_builtin == "builtin:char":
        return build_char_tokenizer()
    if not os.path.isdir(path_or_builtin):
        raise FileNotFoundError(f"tokenizer directory {path_or_builtin!r} does not exist")
    tok = AutoTokenizer.from_pretrained(path_or_builtin, local_files_only=True,
                                        trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def unrepresentable_chars(tokenizer, text: str) -> str:
    """The distinct characters of ``text`` that ``tokenizer`` can only encode as its unknown token
    (in order of first appearance; '' when every character is representable)."""
    unk = tokenizer.unk_token_id
    if unk is None or not text or unk not in tokenizer.encode(text, add_special_tokens=False):
        return ""
    return "".join(ch for ch in dict.fromkeys(text)
                   if unk in tokenizer.encode(ch, add_special_tokens=False))


def describe_chars(chars: str, limit: int = 5) -> str:
    """``'é' (U+00E9), '😀' (U+1F600)`` for an error message."""
    shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")
