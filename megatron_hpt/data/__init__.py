"""Data: the built-in arithmetic task, tokenizers and row building."""
