"""Tiny random Hugging Face models of each supported family, saved with ``save_pretrained``
(safetensors), plus the per-rank worker that checks converted checkpoints at several TP/PP layouts.

References are independent of the code under test: the original safetensors bytes, and
``transformers``' logits on the same tokens.
"""
from __future__ import annotations

import io
import os
from typing import Dict, List

import torch
from safetensors.torch import load_file

TINY = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, num_hidden_layers=2, vocab_size=256, max_position_embeddings=512,
            bos_token_id=1, eos_token_id=2)

#: variant name -> (model_type, extra config fields)
VARIANTS = {
    "llama": ("llama", dict(tie_word_embeddings=False)),
    "llama3_rope": ("llama", dict(tie_word_embeddings=False, max_position_embeddings=131072, rope_theta=500000.0,
                                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                    high_freq_factor=4.0, original_max_position_embeddings=8192))),
    "qwen2": ("qwen2", dict(tie_word_embeddings=False)),
    "qwen2_tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen3": ("qwen3", dict(tie_word_embeddings=False)),
    "mistral": ("mistral", dict(tie_word_embeddings=False, sliding_window=None)),
}


def save_tiny_tokenizer(path: str) -> None:
    """A word-level tokenizer built locally (no download), saved next to the model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(50)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(path)


def make_hf_model(path: str, variant: str, seed: int = 0, with_tokenizer: bool = True) -> str:
    """Save a tiny random fp32 model of ``variant``; returns ``path``."""
    from transformers import AutoConfig, AutoModelForCausalLM
    model_type, extra = VARIANTS[variant]
    cfg = AutoConfig.for_model(model_type, **{**TINY, **extra})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).to(torch.float32)
    with torch.no_grad():  # random norms too, so a swapped norm cannot pass unnoticed
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    if with_tokenizer:
        save_tiny_tokenizer(path)
    return path


def read_safetensors_dir(path: str) -> Dict[str, torch.Tensor]:
    out = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(path, f)))
    return out


def hf_logits(hf_dir: str, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


def hf_logits_from_state(hf_dir: str, state: Dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """transformers' logits after loading ``state`` (e.g. an export stream) strictly into a fresh
    model of ``hf_dir``'s config."""
    from transformers import AutoConfig, AutoModelForCausalLM
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(hf_dir)).to(torch.float32).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    assert set(missing) <= tied and not unexpected, (missing, unexpected)
    with torch.no_grad():
        return model(tokens).logits


# ---------------------------------------------------------------- distributed worker (gloo ranks)

def _set_layout(tp: int, pp: int) -> None:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    from megatron_hpt.training.distributed import initialize
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    initialize(tp, pp)
    model_parallel_cuda_manual_seed(0)


def _stage_model(shape, tp: int, pp: int):
    from megatron.core import parallel_state as ps
    from megatron_hpt.models import build_gpt_model, transformer_config
    cfg = transformer_config(shape, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                             params_dtype=torch.float32, pipeline_dtype=torch.float32)
    return build_gpt_model(shape, cfg, pre_process=ps.is_pipeline_first_stage(),
                           post_process=ps.is_pipeline_last_stage())


def _full_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """megatron-core forward at PP=1, vocab-parallel logits all-gathered over TP."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    pos = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        local = model(tokens, pos, attention_mask=None)  # [b, s, V/TP]
    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(tp)]
    dist.all_gather(parts, local.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)


def layouts_worker(converted: Dict[str, str], layouts: List[tuple], tokens: torch.Tensor,
                   bucket_mb: float, save_variant: str, save_dir: str, wrong_pair: tuple):
    """On every rank, for each (TP, PP) layout and each converted variant: load the checkpoint
    with ``load_megatron_weights``, export it with ``export_hf_weights`` and (PP=1) compute logits.
    Also saves ``save_variant`` with megatron-core's own dist_checkpointing at the last layout, and
    records the error of loading a checkpoint into a model of another family (``wrong_pair``)."""
    import json
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron_hpt.conversion import load_megatron_weights
    from megatron_hpt.models import ModelShape
    from megatron_hpt.rollout.weights import export_hf_weights

    results = {}
    for tp, pp in layouts:
        _set_layout(tp, pp)
        for variant, load_dir in converted.items():
            with open(os.path.join(load_dir, "model_shape.json")) as f:
                shape = ModelShape.from_json(f.read())
            model = _stage_model(shape, tp, pp)
            load_megatron_weights(load_dir, model)
            buckets = [[(n, t.clone()) for n, t in b] for b in export_hf_weights([model], shape, bucket_mb)]
            entry = dict(buckets=buckets)
            if pp == 1:
                entry["logits"] = _full_logits(model, tokens)
            results[(tp, pp, variant)] = entry
            if (tp, pp) == layouts[-1] and variant == save_variant:
                os.makedirs(os.path.join(save_dir, "iter_0000010"), exist_ok=True)
                dist.barrier()
                dist_checkpointing.save({"model": model.sharded_state_dict()}, os.path.join(save_dir, "iter_0000010"))
                if dist.get_rank() == 0:
                    with open(os.path.join(save_dir, "latest_checkpointed_iteration.txt"), "w") as f:
                        f.write("10")
                    with open(os.path.join(save_dir, "model_shape.json"), "w") as f:
                        f.write(shape.to_json())
                    with open(os.path.join(load_dir, "hf_config.json")) as f:
                        json.dump(json.load(f), open(os.path.join(save_dir, "hf_config.json"), "w"))
    model_variant, ckpt_variant = wrong_pair
    with open(os.path.join(converted[model_variant], "model_shape.json")) as f:
        shape = ModelShape.from_json(f.read())
    try:
        load_megatron_weights(converted[ckpt_variant], _stage_model(shape, *layouts[-1]))
        results["wrong_pair_error"] = None
    except Exception as e:  # noqa: BLE001 - the message is what the test checks
        results["wrong_pair_error"] = f"{type(e).__name__}: {e}"
    buf = io.BytesIO()  # bytes, not shared-memory tensors: thousands of tensors would exhaust fds
    torch.save(results, buf)
    return buf.getvalue()


def from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=False)
