"""megatron-core 0.16's Transformer Engine layer spec without Transformer Engine.

``get_gpt_layer_with_transformer_engine_spec`` (dense, no op fuser) builds a ``TransformerLayer``
whose ``input_layernorm`` and ``pre_mlp_layernorm`` are ``IdentityOp`` and whose ``linear_qkv``
and ``linear_fc1`` are ``TELayerNormColumnParallelLinear`` (the norm fused in: parameters
``weight``, ``bias`` when biased, ``layer_norm_weight``); ``linear_proj`` / ``linear_fc2`` are
row-parallel linears, ``q_layernorm`` / ``k_layernorm`` plain norms, the block's final norm a
norm. ``te_layer_spec`` builds that structure with megatron's real ``TransformerLayer``,
``SelfAttention`` and ``MLP``, and a stand-in for the fused module: megatron's local
``ColumnParallelLinear`` plus a ``layer_norm_weight`` applied as RMSNorm before it. The model's
parameter names and checkpoint keys are the TE spec's; its numerics are the local spec's.
"""
from __future__ import annotations

import torch
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.tensor_parallel import ColumnParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules


class LayerNormColumnParallelLinear(ColumnParallelLinear):
    """TELayerNormColumnParallelLinear's parameter names and math (RMSNorm with
    ``layer_norm_weight``, then the column-parallel linear) on megatron's local linear layer."""

    def __init__(self, input_size, output_size, *, config, **kwargs):
        super().__init__(input_size, output_size, config=config, **kwargs)
        self.layer_norm_weight = torch.nn.Parameter(torch.ones(input_size, dtype=config.params_dtype))
        self.eps = config.layernorm_epsilon

    def forward(self, x, *args, **kwargs):
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return super().forward(normed.to(x.dtype) * self.layer_norm_weight, *args, **kwargs)


def te_layer_spec(qk_layernorm: bool = False, **_) -> ModuleSpec:
    """The TE spec's layer structure, with the stand-in for the fused norm + linear."""
    local = get_gpt_layer_local_spec(qk_layernorm=qk_layernorm, normalization="RMSNorm").submodules
    attn, mlp = local.self_attention.submodules, local.mlp.submodules
    return ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
        self_attention=ModuleSpec(
            module=SelfAttention, params={"attn_mask_type": AttnMaskType.causal},
            submodules=SelfAttentionSubmodules(
                linear_qkv=LayerNormColumnParallelLinear, core_attention=attn.core_attention,
                linear_proj=attn.linear_proj, q_layernorm=attn.q_layernorm, k_layernorm=attn.k_layernorm)),
        self_attn_bda=local.self_attn_bda,
        pre_mlp_layernorm=IdentityOp,
        mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(
            linear_fc1=LayerNormColumnParallelLinear, linear_fc2=mlp.linear_fc2)),
        mlp_bda=local.mlp_bda))
