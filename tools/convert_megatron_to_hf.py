#!/usr/bin/env python
"""Convert a Megatron save dir (from convert_hf_to_megatron.py or from training: tracker file +
release/ or iter_NNNNNNN/, model_shape.json, hf_config.json, tokenizer/) to a Hugging Face
directory loadable by ``transformers.AutoModelForCausalLM.from_pretrained``: sharded safetensors
with model.safetensors.index.json, config.json, generation_config.json and the tokenizer files.

Training checkpoints (iter_NNNNNNN/, any TP/PP) convert as they are: only the model's weights are
read, the optimizer state is ignored. A model built from Megatron flags (no Hugging Face config)
names its family with --model-type; its shape must be one that family has.

The checkpoint is read one layer at a time and at most one output shard is held in memory.
"""
import argparse
import sys

from megatron_hpt.conversion import convert_megatron_to_hf


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="Megatron save dir (holds latest_checkpointed_iteration.txt)")
    p.add_argument("--save", required=True, help="output Hugging Face directory (must be empty or absent)")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (e.g. 5GB, 500MB)")
    p.add_argument("--model-type", choices=["llama", "qwen2", "qwen3", "mistral"], default=None,
                   help="family of a model trained from Megatron flags (a model converted from or "
                        "trained with --hf-model records its own)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --save directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    try:
        convert_megatron_to_hf(a.load, a.save, a.overwrite, a.max_shard_size, progress=not a.no_progress,
                               model_type=a.model_type)
    except (ValueError, OSError) as e:  # bad input, or the disk (full, read-only): nothing written
        print(f"error: {e}" + ("" if isinstance(e, (ValueError, FileNotFoundError, FileExistsError))
                               else f"; nothing was written to {a.save}"), file=sys.stderr)
        return 1
    print(f"wrote {a.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
