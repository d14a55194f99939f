"""Transformer Engine parameter names without Transformer Engine: the TE spec's names (from
megatron-core's own key map), HF -> TE-named -> HF bitwise, and a TE-structured model (real
megatron layers, stand-in for the fused norm+linear) loaded from a converted checkpoint through
the provider's transformer_engine path: its parameters are the table's, its export stream is the
original HF weights bitwise at TP2, its logits those of the local-spec model."""
import pytest
import torch

from conversion_helpers import VARIANTS, from_bytes, read_safetensors_dir
from dist_utils import run_distributed
from te_worker import te_worker

TOKENS = torch.tensor([[1, 17, 42, 250, 3, 99, 7, 128], [2, 200, 31, 8, 77, 140, 9, 11]])
SUBSET = ("llama", "qwen2_tied", "qwen3")


def _arch_shape(hf_dir):
    from megatron_hpt.conversion import mapping_for
    from megatron_hpt.models import load_hf_config, shape_from_hf_config
    cfg = load_hf_config(hf_dir)
    return mapping_for(cfg["model_type"]), shape_from_hf_config(cfg)


def test_te_names_come_from_megatron_core():
    from megatron_hpt.conversion.names import in_spec, te_prefix_map, to_local
    assert dict(te_prefix_map()) == {"input_layernorm.": "self_attention.linear_qkv.layer_norm_",
                                     "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}
    assert in_spec("input_layernorm.weight", "transformer_engine") == "self_attention.linear_qkv.layer_norm_weight"
    assert in_spec("pre_mlp_layernorm.bias", "te") == "mlp.linear_fc1.layer_norm_bias"
    assert in_spec("mlp.linear_fc1.layer_norm_weight", "local") == "pre_mlp_layernorm.weight"
    assert to_local("self_attention.linear_qkv.weight") == "self_attention.linear_qkv.weight"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hf_to_te_named_to_hf_is_bitwise(variant, hf_dirs):
    from megatron_hpt.conversion.names import (hf_state_from_megatron, megatron_state_from_hf,
                                               te_spec_parameter_names)
    arch, shape = _arch_shape(hf_dirs[variant])
    hf = read_safetensors_dir(hf_dirs[variant])
    te = megatron_state_from_hf(arch, shape, hf, spec="transformer_engine")
    assert sorted(te) == sorted(te_spec_parameter_names(arch, shape))
    assert "decoder.layers.1.self_attention.linear_qkv.layer_norm_weight" in te
    assert not any("input_layernorm" in k or "pre_mlp_layernorm" in k for k in te)
    te["decoder.layers.0.self_attention.linear_qkv._extra_state"] = None  # TE state: skipped
    back = hf_state_from_megatron(arch, shape, te)
    assert sorted(back) == sorted(hf)
    assert all(back[n].dtype == hf[n].dtype and torch.equal(back[n], hf[n]) for n in hf)
    local = megatron_state_from_hf(arch, shape, hf, spec="local")
    assert "decoder.layers.0.input_layernorm.weight" in local
    assert all(torch.equal(hf_state_from_megatron(arch, shape, local)[n], hf[n]) for n in hf)


def test_unknown_megatron_names_are_refused(hf_dirs):
    from megatron_hpt.conversion.names import hf_state_from_megatron, megatron_state_from_hf
    arch, shape = _arch_shape(hf_dirs["llama"])
    state = megatron_state_from_hf(arch, shape, read_safetensors_dir(hf_dirs["llama"]), spec="te")
    state["decoder.layers.0.self_attention.linear_qkv.layer_norm_bias"] = torch.zeros(64)
    del state["decoder.layers.1.mlp.linear_fc1.layer_norm_weight"]
    with pytest.raises(KeyError, match=r"unknown keys \['decoder.layers.0.self_attention.linear_qkv"
                                       r".layer_norm_bias'\]; lacks .*model.layers.1.post_attention_layernorm"):
        hf_state_from_megatron(arch, shape, state)


@pytest.fixture(scope="module")
def te_models(converted):
    raw = run_distributed(te_worker, 2, {v: converted[v] for v in SUBSET}, TOKENS, timeout=600)
    return from_bytes(raw[0])


def test_te_structured_model_loads_exports_and_matches_local(te_models, hf_dirs):
    tp = 2
    for variant in SUBSET:
        res = te_models[(tp, variant)]
        te, local = res["transformer_engine"], res["local"]
        assert sorted(te["names"]) == sorted(res["table"]), variant  # names do not depend on TP
        assert any(n.endswith("linear_qkv.layer_norm_weight") for n in te["names"])
        assert not any("input_layernorm" in n for n in te["names"])
        assert any(n.endswith("input_layernorm.weight") for n in local["names"])
        original = read_safetensors_dir(hf_dirs[variant])
        for impl in (te, local):
            assert sorted(impl["export"]) == sorted(original), variant
            assert all(torch.equal(impl["export"][n], original[n]) for n in original), variant
        diff = (te["logits"] - local["logits"]).abs().max().item()
        assert diff <= 1e-5, (variant, tp, diff)


def test_one_rule_picks_the_layer_spec():
    from megatron_hpt.arguments import ConfigError, build_config, build_parser
    from megatron_hpt.models.provider import resolve_transformer_impl
    assert resolve_transformer_impl() == "local"  # no CUDA / no Transformer Engine here
    assert resolve_transformer_impl("transformer_engine") == "transformer_engine"
    with pytest.raises(ValueError, match="--transformer-impl must be one of"):
        resolve_transformer_impl("apex")
    flags = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "16"]
    assert build_config(build_parser().parse_args(flags), 1, tokenizer_vocab_size=80).transformer_impl == "local"
    with pytest.raises(ConfigError, match="--transformer-impl transformer_engine needs Transformer Engine"):
        build_config(build_parser().parse_args(flags + ["--transformer-impl", "transformer_engine"]), 1,
                     tokenizer_vocab_size=80)


def test_loading_is_strict_about_weights_and_lenient_about_extra_state():
    from megatron_hpt.conversion.checkpoint import load_model_state

    class WithExtraState(torch.nn.Linear):  # as TE modules: FP8 metadata in ``_extra_state``
        def get_extra_state(self):
            return None

        def set_extra_state(self, state):
            pass

    module = torch.nn.Sequential(WithExtraState(3, 2))
    state = {k: v for k, v in torch.nn.Linear(3, 2).state_dict().items()}
    load_model_state(module, {"0." + k: v for k, v in state.items()}, "ckpt")  # no _extra_state: fine
    assert torch.equal(module[0].weight, state["weight"])
    with pytest.raises(RuntimeError, match=r"ckpt: loaded state does not match the model: missing \['0.bias'\]"):
        load_model_state(module, {"0.weight": state["weight"]}, "ckpt")
