"""Llama 3.x (``model_type: llama``) <-> megatron-core GPTModel.

Keys: megatron-core parameter names (local spec; ``layer`` keys live under ``decoder.layers.N.``);
values: the Hugging Face tensor(s) each is made of, with ``*`` = N, and how TP splits it.
"""
from megatron_hpt.conversion.mapping import QKV, ArchMapping, Direct, GatedMLP

L = "model.layers.*."

LLAMA = ArchMapping(
    model_type="llama",
    architecture="LlamaForCausalLM",
    shape_fields=dict(add_qkv_bias=False, qk_layernorm=False),
    model={
        "embedding.word_embeddings.weight": Direct("model.embed_tokens.weight", ("vocab", "hidden"), tp="vocab"),
        "decoder.final_layernorm.weight": Direct("model.norm.weight", ("hidden",)),
        "output_layer.weight": Direct("lm_head.weight", ("vocab", "hidden"), tp="vocab"),  # untied only
    },
    layer={
        "input_layernorm.weight": Direct(L + "input_layernorm.weight", ("hidden",)),
        "self_attention.linear_qkv.weight": QKV(L + "self_attn.q_proj.weight", L + "self_attn.k_proj.weight",
                                                L + "self_attn.v_proj.weight"),
        "self_attention.linear_proj.weight": Direct(L + "self_attn.o_proj.weight", ("hidden", "q_dim"), tp="row"),
        "pre_mlp_layernorm.weight": Direct(L + "post_attention_layernorm.weight", ("hidden",)),
        "mlp.linear_fc1.weight": GatedMLP(L + "mlp.gate_proj.weight", L + "mlp.up_proj.weight"),
        "mlp.linear_fc2.weight": Direct(L + "mlp.down_proj.weight", ("hidden", "ffn"), tp="row"),
    },
)
