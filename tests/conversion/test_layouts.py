"""One converted checkpoint at TP1 PP1, TP2 PP1, TP1 PP2, TP2 PP2 (4 gloo ranks, one spawn):
load_megatron_weights + export_hf_weights reproduce the original safetensors bitwise on every
rank; megatron-core logits match transformers' (PP=1); the export stream loaded into transformers
reproduces megatron's logits; megatron-core's own save of a loaded model converts back bitwise."""
import os

import pytest
import torch

from conversion_helpers import VARIANTS, from_bytes, hf_logits, hf_logits_from_state, layouts_worker, read_safetensors_dir
from dist_utils import run_distributed

LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]
BUCKET_MB = 0.02  # ~21 KB: several buckets per model, some tensors larger than a bucket
TOKENS = torch.tensor([[1, 17, 42, 250, 3, 99, 7, 128, 64, 5], [2, 200, 31, 8, 77, 140, 9, 11, 255, 0]])


@pytest.fixture(scope="module")
def per_rank(converted, tmp_path_factory):
    save_dir = str(tmp_path_factory.mktemp("trained"))
    raw = run_distributed(layouts_worker, 4, converted, LAYOUTS, TOKENS, BUCKET_MB, "qwen2_tied", save_dir,
                          ("qwen3", "llama"), timeout=600)
    return [from_bytes(r) for r in raw], save_dir


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_stream_is_the_original_weights_on_every_rank(layout, per_rank, hf_dirs):
    results, _ = per_rank
    limit = BUCKET_MB * 2 ** 20
    for variant in VARIANTS:
        original = read_safetensors_dir(hf_dirs[variant])
        for rank, res in enumerate(results):
            buckets = res[(*layout, variant)]["buckets"]
            names = [n for b in buckets for n, _ in b]
            assert sorted(names) == sorted(original), (variant, rank, set(names) ^ set(original))
            assert len(names) == len(set(names))
            for b in buckets:
                nbytes = sum(t.numel() * t.element_size() for _, t in b)
                assert len(b) == 1 or nbytes <= limit, (variant, [n for n, _ in b], nbytes)
                for n, t in b:
                    assert t.dtype == original[n].dtype and torch.equal(t, original[n]), (variant, rank, n)


@pytest.mark.parametrize("tp", [1, 2])
def test_megatron_logits_match_transformers(tp, per_rank, hf_dirs):
    results, _ = per_rank
    for variant in VARIANTS:
        ref = hf_logits(hf_dirs[variant], TOKENS)
        for rank, res in enumerate(results):
            got = res[(tp, 1, variant)]["logits"]
            diff = (got - ref).abs().max().item()
            assert diff <= 1e-4, (variant, rank, diff)


@pytest.mark.parametrize("tp", [1, 2])
def test_export_stream_in_transformers_reproduces_megatron_logits(tp, per_rank, hf_dirs):
    results, _ = per_rank
    for variant in VARIANTS:
        res = results[-1][(tp, 1, variant)]
        state = {n: t for b in res["buckets"] for n, t in b}
        got = hf_logits_from_state(hf_dirs[variant], state, TOKENS)
        diff = (got - res["logits"]).abs().max().item()
        assert diff <= 1e-4, (variant, diff)


def test_checkpoint_saved_by_megatron_core_converts_back(per_rank, hf_dirs, converted, tmp_path):
    """The trainer's checkpoints (megatron-core's own save at TP2 PP2, iter_0000010) convert too."""
    from megatron_hpt.conversion import convert_megatron_to_hf
    from megatron_hpt.conversion.checkpoint import read_tensor_metadata
    _, save_dir = per_rank
    ours = read_tensor_metadata(os.path.join(converted["qwen2_tied"], "release"))
    theirs = read_tensor_metadata(os.path.join(save_dir, "iter_0000010"))
    assert ours == theirs  # same keys, global shapes and dtypes as megatron-core writes
    convert_megatron_to_hf(save_dir, str(tmp_path / "hf"), progress=False)
    original, back = read_safetensors_dir(hf_dirs["qwen2_tied"]), read_safetensors_dir(str(tmp_path / "hf"))
    assert sorted(back) == sorted(original)
    assert all(torch.equal(back[n], original[n]) for n in original)


def test_load_into_wrong_model_names_the_keys(per_rank):
    results, _ = per_rank
    for res in results:
        msg = res["wrong_pair_error"]
        assert msg is not None and "q_layernorm" in msg and "lacks" in msg, msg
