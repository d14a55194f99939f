"""Benchmark evaluation: n samples per problem from a rollout engine, graded by a reward,
reported as avg@k and pass@k per benchmark (the paper's protocol: AIME/AMC avg@32 at T = 0.6,
top-p 0.95; the others avg@1).

The model is a Megatron checkpoint (``--load``: from training or from convert_hf_to_megatron;
its ``model_shape.json`` gives the shape) or a Hugging Face directory (``--hf-model``). The
tokenizer comes from ``--hf-model``, else from the checkpoint's ``tokenizer/``, else the built-in
character tokenizer. Engines: ``embedded`` (the megatron-core model decodes; TP = world size
under torchrun) or ``vllm`` (from the HF directory, or fed the checkpoint's weights through the
same stream the trainer uses).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from megatron_hpt.data.prompts import BUILTIN, HELD_OUT_SEED_OFFSET, PromptItem, PromptSource
from megatron_hpt.eval.metrics import avg_at_k, pass_at_k
from megatron_hpt.rollout import SamplingParams

@dataclass
class BenchmarkResult:
    name: str
    num_problems: int
    n_samples: int
    metrics: Dict[str, float]
    correct: List[List[bool]] = field(default_factory=list)
    """Per problem, per sample: graded correct (kept in the JSON output)."""


def benchmark_items(path: str, tokenizer, chat: bool, limit: Optional[int] = None,
                    builtin_count: int = 64, train_seed: int = 1234,
                    strict_chars: bool = False) -> List[PromptItem]:
    """The problems of one benchmark in file order; for builtin:arithmetic the held-out problems
    of a training run with ``--seed train_seed`` (the ones its own evaluation reports).
    String prompts are wrapped as one user turn when ``chat`` (the tokenizer's chat template).
    Prompt characters the tokenizer can only encode as its unknown token are an error naming the
    row with ``strict_chars`` (the built-in tokenizer), else counted and reported on stderr."""
    if path == BUILTIN:
        return PromptSource(BUILTIN, tokenizer, train_seed + HELD_OUT_SEED_OFFSET,
                            held_out=True).items(
            0, limit or builtin_count)
    from megatron_hpt.data.records import DataError, read_records, render_prompt
    from megatron_hpt.data.tokenizer import describe_chars, unrepresentable_chars
    records = read_records(path).records[:limit]
    bad, seen = 0, ""
    for r in records:
        text = r.prompt if isinstance(r.prompt, str) else "\n".join(t["content"] for t in r.prompt)
        chars = unrepresentable_chars(tokenizer, text)
        if chars and strict_chars:
            raise DataError(f"{path}: row {r.row}: field 'prompt' has characters the tokenizer "
                            f"cannot represent: {describe_chars(chars)}; evaluate with --hf-model "
                            "of a tokenizer that covers them")
        bad += bool(chars)
        seen += "".join(c for c in chars if c not in seen)
    if bad:
        import sys
        print(f"note: {path}: {bad} of {len(records)} prompts have characters the tokenizer "
              f"encodes as its unknown token: {describe_chars(seen)}", file=sys.stderr)
    return [PromptItem(render_prompt([{"role": "user", "content": r.prompt}]
                                     if chat and isinstance(r.prompt, str) else r.prompt, tokenizer),
                       r.demonstration, r.answer) for r in records]


def evaluate_items(engine, tokenizer, items: Sequence[PromptItem], n_samples: int,
                   sampling: SamplingParams, grade, ks: Sequence[int], name: str) -> BenchmarkResult:
    samples = engine.generate([it.prompt_ids for it in items], n_samples, sampling)
    correct = [[False] * n_samples for _ in items]
    lengths, truncated = [], 0
    seen = [0] * len(items)
    for s in samples:
        text = tokenizer.decode(s.response_token_ids, skip_special_tokens=True)
        correct[s.prompt_index][seen[s.prompt_index]] = bool(grade(text, items[s.prompt_index].answer))
        seen[s.prompt_index] += 1
        lengths.append(len(s.response_token_ids))
        truncated += s.finish_reason == "length"
    metrics = {f"avg@{n_samples}": avg_at_k(correct)}
    for k in sorted(set(k for k in ks if k <= n_samples)):
        metrics[f"pass@{k}"] = pass_at_k(correct, k)
    metrics["mean response length"] = sum(lengths) / len(lengths)
    metrics["truncated"] = truncated / len(samples)
    return BenchmarkResult(name, len(items), n_samples, metrics, correct)


def model_positions(load: Optional[str], hf_model: Optional[str]) -> Optional[int]:
    """The model's position count, read before anything is built (``model_shape.json`` of a
    checkpoint, else the HF config); raises FileNotFoundError/ValueError naming the file."""
    if load:
        from megatron_hpt.conversion.checkpoint import resolve_checkpoint_dir
        from megatron_hpt.conversion.megatron_to_hf import read_shape_and_config
        resolve_checkpoint_dir(load)  # a tracker naming an existing directory
        return read_shape_and_config(load)[0].max_position_embeddings
    from megatron_hpt.models.hf_config import load_hf_config
    return load_hf_config(hf_model).get("max_position_embeddings")


def check_prompt_lengths(name: str, items: Sequence[PromptItem], positions: Optional[int]) -> None:
    """A prompt must leave the model at least one position to answer in."""
    from megatron_hpt.data.records import DataError
    if positions is None:
        return
    for i, it in enumerate(items):
        if len(it.prompt_ids) >= positions:
            raise DataError(f"{name}: row {i}: field 'prompt' is {len(it.prompt_ids)} tokens; the "
                            f"model has {positions} positions, so no answer fits; shorten the "
                            "prompt or evaluate a model with more positions")


def load_tokenizer_for(load: Optional[str], hf_model: Optional[str]):
    from megatron_hpt.data.tokenizer import load_tokenizer
    if hf_model:
        return load_tokenizer(hf_model)
    if load and os.path.isdir(os.path.join(load, "tokenizer")):
        return load_tokenizer(os.path.join(load, "tokenizer"))
    return load_tokenizer("builtin:char")


def torch_dtype(name: str) -> Optional[torch.dtype]:
    """``--dtype`` of the evaluation tool: None for auto, else the torch dtype."""
    return None if name == "auto" else {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def build_megatron_policy(load: Optional[str], hf_model: Optional[str], tp: int,
                          dtype: Optional[torch.dtype] = None):
    """This rank's TP shard of the policy (``dtype``; None: fp32 on CPU, bf16 on GPU), weights
    from ``load`` or converted from ``hf_model`` into a temporary checkpoint. Returns (model,
    shape)."""
    from megatron_hpt.conversion.megatron_to_hf import read_shape_and_config
    from megatron_hpt.models.stage import build_model_stage
    from megatron_hpt.training.checkpoint import load_checkpoint
    tmp = None
    if load is None:
        from megatron_hpt.conversion import convert_hf_to_megatron
        tmp = tempfile.mkdtemp(prefix="megatron_hpt_eval_")
        load = os.path.join(tmp, "ckpt")
        if torch.distributed.get_rank() == 0:
            convert_hf_to_megatron(hf_model, load, progress=False)
        torch.distributed.barrier()
    shape, _ = read_shape_and_config(load)
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model, _ = build_model_stage(
        shape, tensor_model_parallel_size=tp, params_dtype=dtype, bf16=dtype == torch.bfloat16,
        use_cpu_initialization=not torch.cuda.is_available())
    if torch.cuda.is_available():
        model = model.cuda()
    load_checkpoint(load, [model], finetune=True)
    return model, shape


def write_results(results: List[BenchmarkResult], path: str) -> None:
    """JSON with metrics and per-sample correctness, written atomically."""
    payload = [dict(name=r.name, num_problems=r.num_problems, n_samples=r.n_samples,
                    metrics=r.metrics, correct=r.correct) for r in results]
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def format_table(results: List[BenchmarkResult]) -> str:
    keys = sorted({k for r in results for k in r.metrics}, key=lambda k: (not k.startswith("avg"), k))
    lines = ["| benchmark | problems | " + " | ".join(keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for r in results:
        cells = [f"{r.metrics[k]:.4f}" if k in r.metrics else "-" for k in keys]
        lines.append(f"| {r.name} | {r.num_problems} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
