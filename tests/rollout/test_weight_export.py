"""export_hf_weights without torch.distributed (TP=PP=1): every HF tensor once, buckets bounded,
Transformer Engine parameter names resolved by the same table. (TP/PP layouts with gloo ranks are
covered in tests/conversion/test_layouts.py, which exports every converted family at TP1/TP2 x
PP1/PP2 and checks the stream against the original safetensors bytes and transformers' logits.)"""
import torch

from megatron_hpt.conversion import layer_param_name, mapping_for
from megatron_hpt.models import ModelShape
from megatron_hpt.rollout.weights import export_hf_weights, hf_weight_shapes

SHAPE = ModelShape(num_layers=3, hidden_size=32, ffn_hidden_size=48, num_attention_heads=4, num_query_groups=2,
                   vocab_size=64, qk_layernorm=True, untie_embeddings_and_output_weights=True, hf_model_type="qwen3")


class _Layer(torch.nn.Module):
    def __init__(self, number: int):
        super().__init__()
        self.layer_number = number


def _fake_chunk(spec: str, full: dict) -> torch.nn.Module:
    """A module whose parameters carry megatron names of ``spec`` (TE modules cannot be built on
    CPU); values are the full megatron tensors in ``full`` (name in local spelling -> tensor)."""
    root = torch.nn.Module()
    root.decoder = torch.nn.Module()
    root.decoder.layers = torch.nn.ModuleList([_Layer(i + 1) for i in range(SHAPE.num_layers)])
    for name, t in full.items():
        if name.startswith("decoder.layers."):
            idx, rest = name[len("decoder.layers."):].split(".", 1)
            owner, path = root.decoder.layers[int(idx)], layer_param_name(rest, spec).split(".")
        else:
            owner, path = root, name.split(".")
        for part in path[:-1]:
            if not hasattr(owner, part):
                owner.add_module(part, torch.nn.Module())
            owner = getattr(owner, part)
        owner.register_parameter(path[-1], torch.nn.Parameter(t.clone()))
    return root


def _reference():
    """Random HF tensors and the full megatron tensors the table builds from them."""
    arch = mapping_for("qwen3")
    gen = torch.Generator().manual_seed(0)
    hf = {n: torch.randn(s, generator=gen) for n, s in arch.hf_expected(SHAPE).items()}
    full = {k: m.to_megatron([hf[n] for n in m.hf_names()], SHAPE) for k, m in arch.model_entries(SHAPE).items()}
    for layer in range(SHAPE.num_layers):
        for k, m in arch.layer.items():
            full[f"decoder.layers.{layer}.{k}"] = m.to_megatron([hf[n] for n in m.hf_names(layer)], SHAPE)
    return hf, full


def test_stream_covers_every_tensor_once_for_both_specs():
    hf, full = _reference()
    assert set(hf) == set(hf_weight_shapes(SHAPE))
    limit_mb = 0.01
    for spec in ("local", "te"):
        buckets = list(export_hf_weights([_fake_chunk(spec, full)], SHAPE, bucket_mb=limit_mb, spec=spec))
        names = [n for b in buckets for n, _ in b]
        assert sorted(names) == sorted(hf) and len(names) == len(set(names)), spec
        assert names[0] == "model.embed_tokens.weight" and names[-1] == "lm_head.weight"
        for b in buckets:
            assert len(b) == 1 or sum(t.numel() * t.element_size() for _, t in b) <= limit_mb * 2 ** 20
            for n, t in b:
                assert torch.equal(t, hf[n]), (spec, n)


def test_tied_model_has_no_lm_head():
    tied = ModelShape(**{**SHAPE.__dict__, "untie_embeddings_and_output_weights": False})
    hf, full = _reference()
    full.pop("output_layer.weight")
    names = [n for b in export_hf_weights([_fake_chunk("local", full)], tied, 1) for n, _ in b]
    assert "lm_head.weight" not in names and len(names) == len(hf) - 1
