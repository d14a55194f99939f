"""Qwen3 (``model_type: qwen3``) = Llama + per-head RMSNorm on queries and keys (q/k norm)."""
from megatron_hpt.conversion.llama import LLAMA, L
from megatron_hpt.conversion.mapping import Direct

QWEN3 = LLAMA.extend("qwen3", architecture="Qwen3ForCausalLM", qk_layernorm=True, layer={
    "self_attention.q_layernorm.weight": Direct(L + "self_attn.q_norm.weight", ("head_dim",)),
    "self_attention.k_layernorm.weight": Direct(L + "self_attn.k_norm.weight", ("head_dim",)),
})
