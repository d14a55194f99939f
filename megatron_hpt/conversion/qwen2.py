"""Qwen2 / Qwen2.5 (``model_type: qwen2``) = Llama + a bias on the fused QKV projection.

The small Qwen2.5 models tie ``lm_head`` to the embedding (``tie_word_embeddings: true``): then the
checkpoint holds no ``output_layer.weight`` and no ``lm_head.weight`` is written back.
"""
from megatron_hpt.conversion.llama import LLAMA, L
from megatron_hpt.conversion.mapping import QKV

QWEN2 = LLAMA.extend("qwen2", architecture="Qwen2ForCausalLM", add_qkv_bias=True, layer={
    "self_attention.linear_qkv.bias": QKV(L + "self_attn.q_proj.bias", L + "self_attn.k_proj.bias",
                                          L + "self_attn.v_proj.bias", bias=True),
})
