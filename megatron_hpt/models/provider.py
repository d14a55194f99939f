"""ModelShape -> megatron-core ``TransformerConfig`` + layer spec -> ``GPTModel``.

The layer spec is data (``ModuleSpec``), chosen by ONE rule, ``resolve_transformer_impl``: what
``--transformer-impl`` asks for (Megatron-LM's flag: ``local`` or ``transformer_engine``), else
the Transformer Engine spec when TE is importable and CUDA is present, megatron-core's local spec
otherwise. Nothing else in the project chooses layers. The two specs name two parameters per layer
differently (``conversion/names.py``); export and conversion accept both.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_hpt.models.shape import ModelShape
from megatron_hpt.platform import cuda_available, device


def transformer_engine_available() -> bool:
    """True when Transformer Engine imports (it is only ever installed on GPU machines)."""
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return True


TRANSFORMER_IMPLS = ("local", "transformer_engine")


def resolve_transformer_impl(requested: Optional[str] = None) -> str:
    """THE rule: ``requested`` when given (``local`` / ``transformer_engine``), else
    ``transformer_engine`` when CUDA is present and TE imports, else ``local``."""
    if requested is not None:
        if requested not in TRANSFORMER_IMPLS:
            raise ValueError(f"--transformer-impl must be one of {TRANSFORMER_IMPLS}, got {requested!r}")
        return requested
    return "transformer_engine" if cuda_available() and transformer_engine_available() else "local"


def transformer_config(shape: ModelShape, **parallel_and_precision) -> TransformerConfig:
    """The megatron-core config of ``shape``. ``parallel_and_precision`` holds the
    ``ModelParallelConfig`` fields (TP/PP/CP sizes, sequence_parallel, bf16, params_dtype, fp8, ...)
    built by ``arguments.py``."""
    return TransformerConfig(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        ffn_hidden_size=shape.ffn_hidden_size,
        num_attention_heads=shape.num_attention_heads,
        num_query_groups=shape.num_query_groups,
        kv_channels=shape.kv_channels,
        normalization=shape.normalization,
        layernorm_epsilon=shape.norm_epsilon,
        gated_linear_unit=shape.swiglu,
        activation_func=F.silu if shape.swiglu else F.gelu,
        add_bias_linear=shape.add_bias_linear,
        add_qkv_bias=shape.add_qkv_bias,
        qk_layernorm=shape.qk_layernorm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        attention_softmax_in_fp32=True,
        # the loss head divides by global normalizers itself (SPEC §6): megatron must not divide
        # by the number of micro-batches (schedules.forward_step_calc_loss) nor average over DP.
        calculate_per_token_loss=True,
        **parallel_and_precision,
    )


def layer_spec(shape: ModelShape, transformer_impl: Optional[str] = None) -> ModuleSpec:
    """megatron-core's layer spec of ``resolve_transformer_impl(transformer_impl)``."""
    if resolve_transformer_impl(transformer_impl) == "transformer_engine":
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=shape.qk_layernorm)
    return get_gpt_layer_local_spec(qk_layernorm=shape.qk_layernorm, normalization=shape.normalization)


def build_gpt_model(shape: ModelShape, config: TransformerConfig, pre_process: bool = True,
                    post_process: bool = True, vp_stage: Optional[int] = None,
                    transformer_impl: Optional[str] = None) -> GPTModel:
    """One pipeline stage of the model (``pre_process``: holds the embedding; ``post_process``:
    holds the final norm and output layer). Logits come out vocab-parallel: [b, s, vocab/TP].
    ``transformer_impl``: ``local`` / ``transformer_engine`` / None (the rule decides)."""
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(shape, transformer_impl),
        vocab_size=shape.vocab_size,
        max_sequence_length=shape.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=not shape.untie_embeddings_and_output_weights,
        position_embedding_type=shape.position_embedding_type,
        rotary_base=int(shape.rotary_base),
        rope_scaling=shape.rope_scaling_factor is not None,
        rope_scaling_factor=shape.rope_scaling_factor or 8.0,
        vp_stage=vp_stage,
    )
    # megatron-core 0.16.1's local spec builds its norms without device/dtype (CPU, fp32) while
    # the linear layers go to torch.cuda.current_device(): move the whole stage to this process's
    # device, or DDP's broadcast_params would hand CPU tensors to NCCL. A model built wholly
    # on the meta device (tools/plan.py counts parameters without memory, under
    # ``with torch.device("meta")``) stays where it is; a partly-meta one is moved.
    if all(p.is_meta for p in model.parameters()):
        return model
    return model.to(device())
