"""A tiny Llama-shaped model as megatron-core GPTModel, Hugging Face config and weight stream.

head_dim is 64 (vLLM's CPU backend rejects smaller heads). ``megatron_to_hf`` is a plain
test-side name/layout map for TP = 1 (the project's own exporter lives in
``megatron_hpt/rollout/weights.py``); it is only a reference for the engines' tests.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import torch

from megatron_hpt.models import ModelShape, build_gpt_model, hf_config_from_shape, transformer_config

SHAPE = ModelShape(num_layers=2, hidden_size=128, ffn_hidden_size=256, num_attention_heads=2,
                   num_query_groups=2, vocab_size=512, max_position_embeddings=256,
                   norm_epsilon=1e-5, hf_model_type="llama")
EOS = 2


def megatron_model(seed: int, shape: ModelShape = SHAPE, tp: int = 1):
    """This rank's TP shard of a fp32 GPTModel with random weights drawn from ``seed``
    (megatron must be initialised). CPU initialisation draws the full weights and then splits
    them, so every TP layout holds the same model."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)
    config = transformer_config(shape, tensor_model_parallel_size=tp, params_dtype=torch.float32,
                                init_method_std=0.1, use_cpu_initialization=True)
    return build_gpt_model(shape, config)


def hf_config(shape: ModelShape = SHAPE) -> dict:
    cfg = hf_config_from_shape(shape)
    cfg.update(torch_dtype="float32", bos_token_id=1, eos_token_id=EOS, pad_token_id=0)
    return cfg


def megatron_to_hf(model, shape: ModelShape = SHAPE) -> Dict[str, torch.Tensor]:
    """Full HF Llama state dict of a TP = 1 megatron GPTModel (local layer spec)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items() if "_extra_state" not in k}
    hd, heads, groups = shape.kv_channels, shape.num_attention_heads, shape.num_query_groups
    q_per_group = heads // groups
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"],
           "model.norm.weight": sd["decoder.final_layernorm.weight"],
           "lm_head.weight": sd["output_layer.weight"]}
    for i in range(shape.num_layers):
        p, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        qkv = sd[p + "self_attention.linear_qkv.weight"].view(groups, (q_per_group + 2) * hd, -1)
        q, k, v = qkv.split([q_per_group * hd, hd, hd], dim=1)  # per query group: [q..., k, v]
        gate, up = sd[p + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out.update({
            h + "input_layernorm.weight": sd[p + "input_layernorm.weight"],
            h + "self_attn.q_proj.weight": q.reshape(heads * hd, -1),
            h + "self_attn.k_proj.weight": k.reshape(groups * hd, -1),
            h + "self_attn.v_proj.weight": v.reshape(groups * hd, -1),
            h + "self_attn.o_proj.weight": sd[p + "self_attention.linear_proj.weight"],
            h + "post_attention_layernorm.weight": sd[p + "pre_mlp_layernorm.weight"],
            h + "mlp.gate_proj.weight": gate,
            h + "mlp.up_proj.weight": up,
            h + "mlp.down_proj.weight": sd[p + "mlp.linear_fc2.weight"],
        })
    return out


def hf_model(state_dict: Dict[str, torch.Tensor], shape: ModelShape = SHAPE):
    """transformers LlamaForCausalLM (fp32, eval) holding ``state_dict``."""
    from transformers import LlamaConfig, LlamaForCausalLM
    model = LlamaForCausalLM(LlamaConfig(**hf_config(shape))).float().eval()
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    return model


def save_hf_dir(path: str, state_dict: Dict[str, torch.Tensor], shape: ModelShape = SHAPE) -> str:
    hf_model(state_dict, shape).save_pretrained(path)
    return path


def buckets(state_dict: Dict[str, torch.Tensor], max_bytes: int) -> Iterator[List[Tuple[str, torch.Tensor]]]:
    """A weight stream: (name, tensor) pairs in buckets of at most ``max_bytes`` (one tensor
    larger than the bound gets a bucket of its own)."""
    bucket, size = [], 0
    for name, tensor in state_dict.items():
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def hf_logprobs(model, prompt: List[int], response: List[int], temperature: float) -> torch.Tensor:
    """Reference: log_softmax(logits / T) of transformers at each response token. -> [len(response)]"""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1].float()
    t = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits / t, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def hf_greedy(model, prompt: List[int], max_new_tokens: int) -> List[int]:
    """Reference greedy continuation by plain argmax steps (no KV cache, no generate())."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]
