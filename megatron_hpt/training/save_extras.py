"""Files written once beside the checkpoints of a run, so that ``tools/convert_megatron_to_hf.py``
turns any of them into a complete Hugging Face directory: ``hf_config.json`` (the source
``config.json`` when the model came from ``--hf-model``: token ids, rope details and other fields
megatron does not model) and ``tokenizer/`` (the run's tokenizer, built-in or Hugging Face).
``model_shape.json`` is written by ``checkpoint.save_checkpoint`` itself."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional

from megatron_hpt.models.hf_config import load_hf_config


def write_save_extras(save_dir: str, tokenizer, hf_model: Optional[str]) -> None:
    """Write ``hf_config.json`` (with ``hf_model``) and ``tokenizer/`` into ``save_dir``; each
    appears whole (written aside, then renamed). Call on one rank."""
    os.makedirs(save_dir, exist_ok=True)
    if hf_model:
        tmp = os.path.join(save_dir, "hf_config.json.tmp")
        with open(tmp, "w") as f:
            json.dump(load_hf_config(hf_model), f, indent=2)
        os.replace(tmp, os.path.join(save_dir, "hf_config.json"))
    staging = tempfile.mkdtemp(prefix=".tokenizer.tmp-", dir=save_dir)
    try:
        tokenizer.save_pretrained(staging)
        final = os.path.join(save_dir, "tokenizer")
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
