#!/usr/bin/env python
"""Convert a Hugging Face checkpoint (Llama 3.x, Qwen2/2.5, Qwen3, Mistral; safetensors) to a
Megatron save dir that ``megatron_hpt.train --load`` reads.

Output (SAVE)::

    latest_checkpointed_iteration.txt   "release"
    release/                            megatron-core dist_checkpointing (torch_dist) weights
    model_shape.json                    the model's shape (no need to retype --num-layers etc.)
    hf_config.json                      the source config.json (used on the way back)
    tokenizer/                          tokenizer + generation config files copied from --hf-dir
    conversion_args.json                the arguments of this run

ONE converted checkpoint loads at ANY tensor/pipeline parallel layout: torch_dist checkpoints are
resharded when they are loaded. --tensor-model-parallel-size / --pipeline-model-parallel-size only
check that the layout you intend to train with divides the model (attention heads, query groups,
FFN width and vocabulary by TP; layers by PP) and are recorded in conversion_args.json.

Memory: the HF files are memory-mapped and the checkpoint is written one tensor at a time, so a
70B model converts on a host with far less RAM than the model.
"""
import argparse
import sys

from megatron_hpt.conversion import convert_hf_to_megatron


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-dir", required=True, help="Hugging Face model directory (config.json + *.safetensors)")
    p.add_argument("--save", required=True, help="output Megatron save dir (must be empty or absent)")
    p.add_argument("--tensor-model-parallel-size", type=int, default=1,
                   help="TP size to validate against (the checkpoint loads at any TP)")
    p.add_argument("--pipeline-model-parallel-size", type=int, default=1,
                   help="PP size to validate against (the checkpoint loads at any PP)")
    p.add_argument("--target-params-dtype", choices=["bf16", "fp16", "fp32"], default=None,
                   help="cast the weights; default keeps the source dtype")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --save directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    try:
        shape = convert_hf_to_megatron(a.hf_dir, a.save, a.tensor_model_parallel_size,
                                       a.pipeline_model_parallel_size, a.target_params_dtype, a.overwrite,
                                       progress=not a.no_progress)
    except (ValueError, OSError) as e:  # bad input, or the disk (full, read-only): nothing written
        print(f"error: {e}" + ("" if isinstance(e, (ValueError, FileNotFoundError, FileExistsError))
                               else f"; nothing was written to {a.save}"), file=sys.stderr)
        return 1
    print(f"wrote {a.save} ({shape.hf_model_type}, {shape.num_layers} layers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
