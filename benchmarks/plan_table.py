"""The README's memory-plan table (tools/plan.py for the layouts of examples/slurm/hpt.sbatch) and
the activation check of RESULTS.md (formula vs the bytes autograd saves on a CPU forward).

    python benchmarks/plan_table.py
"""
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from megatron_hpt.planning.memory import GiB, Cluster, Layout, Rollout, plan  # noqa: E402
from megatron_hpt.planning.presets import NAMED_SHAPES  # noqa: E402

#: model, nodes, layout, rollout: the layouts of examples/slurm/hpt.sbatch (MODEL_SIZE 8b/32b/70b)
ROWS = [
    ("llama3-8b", 1, Layout(tp=2, sequence_parallel=True, distributed_optimizer=True, seq_length=4096),
     Rollout(tp=2, prompt_length=1024, response_length=3072)),
    ("qwen2.5-32b", 2, Layout(tp=8, sequence_parallel=True, distributed_optimizer=True, seq_length=4096),
     Rollout(tp=8, gpu_memory_utilization=0.35, prompt_length=1024, response_length=3072)),
    ("llama3-70b", 8, Layout(tp=8, pp=4, vpp=4, sequence_parallel=True, recompute_granularity="selective",
                             distributed_optimizer=True, seq_length=8192),
     Rollout(tp=8, prompt_length=1024, response_length=7168)),
    ("llama3-70b", 8, Layout(tp=8, pp=4, seq_length=8192),  # the old layout, refused
     Rollout(tp=8, prompt_length=1024, response_length=7168)),
]


def table() -> str:
    head = ("| model | nodes x 8 H100-80GB | layout | params/GPU | train GiB (P+G+O+act) | "
            "sync GiB | rollout GiB (KV) | KV seqs/engine | verdict |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for name, nodes, lay, ro in ROWS:
        shape, cluster = NAMED_SHAPES[name], Cluster(nodes=nodes)
        p = plan(shape, cluster, lay, ro)
        t, r = p.phases["train"], p.phases["rollout"]
        lines.append(
            f"| {name} | {nodes} | {lay.describe()}, rollout TP{ro.tp} util {ro.gpu_memory_utilization:g} | "
            f"{p.info['params_per_rank'] / 1e9:.2f}B | {p.total('train') / GiB:.1f} "
            f"({t['params'] / GiB:.1f}+{t['grads'] / GiB:.1f}+{t['optimizer'] / GiB:.1f}+"
            f"{t['activations'] / GiB:.1f}) | {p.total('sync') / GiB:.1f} | "
            f"{p.total('rollout') / GiB:.1f} ({r['kv cache'] / GiB:.1f}) | {p.info['concurrency']:.0f} | "
            f"{'fits' if p.ok else 'refused: ' + ', '.join(k for k, v in p.fits.items() if not v)} |")
    return "\n".join(lines)


def activation_check() -> str:
    import torch  # noqa: F401
    from training.test_plan import TINY, _saved_bytes
    from megatron_hpt.planning.activations import ActivationSpec, chunk_bytes
    rows = ["| shape (h, f, a, g) | s x b | recompute | formula B/layer | measured B/layer |",
            "|---|---|---|---|---|"]
    for shape in (TINY, dataclasses.replace(TINY, hidden_size=128, ffn_hidden_size=352,
                                            num_attention_heads=8, num_query_groups=8, kv_channels=None)):
        for seq, mbs in ((48, 2), (128, 1)):
            for rec in ("none", "selective", "full"):
                kw = {} if rec == "none" else dict(recompute_granularity=rec)
                if rec == "full":
                    kw.update(recompute_method="uniform", recompute_num_layers=1)
                one, three = (_saved_bytes(dataclasses.replace(shape, num_layers=n), seq, mbs, **kw)
                              for n in (1, 3))
                spec = ActivationSpec(seq, mbs, bytes_per_element=4, implementation="cpu",
                                      recompute_granularity=rec)
                rows.append(f"| {shape.hidden_size}, {shape.ffn_hidden_size}, "
                            f"{shape.num_attention_heads}, {shape.num_query_groups} | {seq} x {mbs} | "
                            f"{rec} | {chunk_bytes(shape, spec, 1)[0]} | {(three - one) // 2} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
    print()
    print(activation_check())
