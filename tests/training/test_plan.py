"""tools/plan.py: exact per-rank parameter counts (vs a real CPU TP=2/PP=2 build), the activation
formula (vs the bytes autograd saves on a CPU forward), the 70B verdicts of the issue."""
import dataclasses
import os

import pytest
import torch

from dist_utils import run_distributed
from megatron_hpt.models.shape import ModelShape
from megatron_hpt.planning.activations import ActivationSpec, chunk_bytes, layer_bytes
from megatron_hpt.planning.params import _one_rank_world, params_per_rank, total_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ModelShape(num_layers=4, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4,
                  num_query_groups=2, vocab_size=256, max_position_embeddings=512,
                  untie_embeddings_and_output_weights=False, add_qkv_bias=True,
                  hf_model_type="qwen2")


def _real_numel(shape):
    from megatron.core import parallel_state
    from megatron_hpt.models.provider import build_gpt_model, transformer_config
    from megatron_hpt.training import distributed
    distributed.initialize(2, 2)
    try:
        cfg = transformer_config(shape, tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                                 pipeline_dtype=torch.float32,
                                 use_cpu_initialization=True)
        m = build_gpt_model(shape, cfg, pre_process=parallel_state.is_pipeline_first_stage(),
                            post_process=parallel_state.is_pipeline_last_stage())
        return parallel_state.get_pipeline_model_parallel_rank(), sum(p.numel() for p in m.parameters())
    finally:
        distributed.destroy()


def test_params_per_rank_match_a_real_tp2_pp2_build():
    real = run_distributed(_real_numel, 4, TINY)
    for stage, numel in real:
        assert params_per_rank(TINY, 2, 2, stage) == numel
    # one copy of the model, counted by hand: embedding (tied), per layer 2 norms + QKV (+bias)
    # + proj + fc1 [gate; up] + fc2, final norm
    h, f, V, q, kv = 64, 176, 256, 64, 2 * 2 * 16
    layer = 2 * h + h * (q + kv) + (q + kv) + q * h + h * 2 * f + f * h
    assert total_params(TINY) == V * h + 4 * layer + h


def _saved_bytes(shape, seq, mbs, **cfg_kw):
    """Bytes of the distinct non-parameter storages autograd saves in one forward."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    from megatron_hpt.models.provider import build_gpt_model, transformer_config
    from megatron_hpt.platform import install_cpu_platform
    install_cpu_platform()
    with _one_rank_world():
        model_parallel_cuda_manual_seed(1)
        m = build_gpt_model(shape, transformer_config(shape, use_cpu_initialization=True, **cfg_kw))
        params = {p.untyped_storage().data_ptr() for p in m.parameters()}
        seen = {}

        def pack(t):
            st = t.untyped_storage()
            if st.data_ptr() not in params:
                seen[st.data_ptr()] = st.nbytes()
            return t
        tokens = torch.randint(0, shape.vocab_size, (mbs, seq))
        pos = torch.arange(seq).unsqueeze(0).expand(mbs, seq)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = m(tokens, pos, None)  # the forward's saves only (not the recompute's)
        out.sum().backward()
        return sum(seen.values())


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_activation_formula_matches_saved_bytes_on_cpu(recompute):
    """Tolerance 0: the per-layer count of activations.py (implementation=cpu) equals, byte for
    byte, what autograd saves per layer (L=3 minus L=1, halved) for fp32 on CPU."""
    kw = {} if recompute == "none" else dict(recompute_granularity=recompute)
    if recompute == "full":
        kw.update(recompute_method="uniform", recompute_num_layers=1)
    seq, mbs = 48, 2
    one, three = (_saved_bytes(dataclasses.replace(TINY, num_layers=n), seq, mbs, **kw) for n in (1, 3))
    spec = ActivationSpec(seq, mbs, bytes_per_element=4, implementation="cpu",
                          recompute_granularity=recompute)
    kept, _ = chunk_bytes(TINY, spec, 1)
    assert (three - one) / 2 == kept
    if recompute == "none":
        # the GPU formula shares every term but attention internals and the norm's extra copy
        gpu = layer_bytes(TINY, dataclasses.replace(spec, implementation="gpu"))
        assert gpu < kept


def _plan_main(argv, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("plan_tool", os.path.join(ROOT, "tools", "plan.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rc = tool.main(argv)
    return rc, capsys.readouterr().out


def test_planner_70b_verdicts(capsys):
    """The issue's done-when: the launch script's 70B layout fits in both phases; the old one
    (TP8 PP4 DP2, no distributed optimizer, seq 8192, no SP/recompute) is refused with reasons."""
    base = ["--model", "llama3-70b", "--nodes", "8", "--gpus-per-node", "8", "--gpu", "h100-80gb",
            "--seq-length", "8192", "--tensor-model-parallel-size", "8",
            "--pipeline-model-parallel-size", "4", "--rollout-max-prompt-len", "1024",
            "--rollout-max-response-len", "7168", "--no-search"]
    rc, out = _plan_main(base, capsys)
    assert rc == 1, out
    assert "REFUSED: train: stage 0 needs" in out and "no distributed optimizer" in out, out
    assert "training state not offloaded" in out, out
    rc, out = _plan_main(base + LAYOUT_70B, capsys)
    assert rc == 0 and "DOES NOT FIT" not in out, out


#: the 70B layout of examples/slurm/hpt.sbatch (kept in sync by tests/test_slurm_scripts.py)
LAYOUT_70B = ["--sequence-parallel", "--use-distributed-optimizer",
              "--num-layers-per-virtual-pipeline-stage", "5",
              "--recompute-granularity", "selective",
              "--rollout-tensor-parallel-size", "8", "--rollout-gpu-memory-utilization", "0.5"]
