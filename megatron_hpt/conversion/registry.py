"""The model-family registry: ``model_type`` -> the family (``ArchMapping``: the conversion table
and the facts of its Hugging Face config). ``models/hf_config.py`` reads the same table.

Adding a family: one module here (``llama.py``, ``qwen2.py``, ...) defining its ``ArchMapping``,
plus its entry in ``MAPPINGS``."""
from __future__ import annotations

from megatron_hpt.conversion.llama import LLAMA
from megatron_hpt.conversion.mapping import ArchMapping
from megatron_hpt.conversion.mistral import MISTRAL
from megatron_hpt.conversion.qwen2 import QWEN2
from megatron_hpt.conversion.qwen3 import QWEN3

MAPPINGS = {m.model_type: m for m in (LLAMA, QWEN2, QWEN3, MISTRAL)}


def mapping_for(model_type: str, source: str = "config.json") -> ArchMapping:
    """The table of ``model_type``; raises naming the supported types."""
    if model_type not in MAPPINGS:
        raise ValueError(f"{source}: unsupported model_type {model_type!r}; supported: {sorted(MAPPINGS)}")
    return MAPPINGS[model_type]
