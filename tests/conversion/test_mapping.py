"""The family tables against transformers' own parameter names/shapes, and the TP split rules."""
import pytest
import torch

from conversion_helpers import TINY, VARIANTS
from megatron_hpt.conversion import QKV, GatedMLP, layer_param_name, mapping_for, tp_merge, tp_shard
from megatron_hpt.models import shape_from_hf_config


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_table_lists_exactly_the_transformers_parameters(variant):
    from transformers import AutoConfig, AutoModelForCausalLM
    model_type, extra = VARIANTS[variant]
    cfg = AutoConfig.for_model(model_type, **{**TINY, **extra})
    model = AutoModelForCausalLM.from_config(cfg)
    ref = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        ref.pop("lm_head.weight", None)
    assert mapping_for(model_type).hf_expected(shape_from_hf_config(cfg.to_dict())) == ref


def test_qkv_layout_is_grouped_per_query_group():
    """Reference built group by group: [q heads of g ; k of g ; v of g] for g = 0, 1."""
    shape = shape_from_hf_config(dict(TINY, model_type="llama"))
    d, qpg = 16, 2
    q, k, v = torch.randn(64, 64), torch.randn(32, 64), torch.randn(32, 64)
    ref = torch.cat([torch.cat([q[g * qpg * d:(g + 1) * qpg * d], k[g * d:(g + 1) * d], v[g * d:(g + 1) * d]])
                     for g in range(2)])
    m = QKV("q", "k", "v")
    fused = m.to_megatron([q, k, v], shape)
    assert torch.equal(fused, ref)
    assert all(torch.equal(a, b) for a, b in zip(m.to_hf(fused, shape), [q, k, v]))
    # TP=2 by query group: rank r holds exactly group r
    assert torch.equal(tp_shard(fused, m, 2, 1), ref[64:])  # (2 q heads + k + v) * 16 rows per group


def test_gated_fc1_shards_gate_and_up_separately():
    gate, up = torch.arange(8.).view(8, 1), 100 + torch.arange(8.).view(8, 1)
    m = GatedMLP("g", "u")
    full = m.to_megatron([gate, up], None)
    shards = [tp_shard(full, m, 2, r) for r in range(2)]
    assert torch.equal(shards[1], torch.cat([gate[4:], up[4:]]))
    assert torch.equal(tp_merge(shards, m), full)


def test_transformer_engine_names():
    assert layer_param_name("input_layernorm.weight", "te") == "self_attention.linear_qkv.layer_norm_weight"
    assert layer_param_name("pre_mlp_layernorm.weight", "te") == "mlp.linear_fc1.layer_norm_weight"
    assert layer_param_name("mlp.linear_fc2.weight", "te") == "mlp.linear_fc2.weight"
    assert layer_param_name("input_layernorm.weight") == "input_layernorm.weight"
    with pytest.raises(ValueError, match="spec must be one of"):
        layer_param_name("x", "apex")
