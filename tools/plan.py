"""Memory and step-time planner: will this model train and roll out on this cluster in this layout?

    python tools/plan.py --model llama3-70b --nodes 8 --gpus-per-node 8 --gpu h100-80gb \\
        --tensor-model-parallel-size 8 --pipeline-model-parallel-size 4 --seq-length 8192 \\
        --rollout-tensor-parallel-size 8 --rollout-gpu-memory-utilization 0.5

prints per-GPU bytes of each phase (train / weight sync / rollout), whether each fits, why not,
a rough step time and the nearest layout that fits; exits 0 when the layout fits, 1 otherwise.
``--model`` is a named size (llama3-8b, llama3-70b, qwen2.5-32b, ...) or a Hugging Face
directory / config.json. Formulas: megatron_hpt/planning/{params,activations,memory}.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_hpt.planning.memory import GiB, Cluster, Layout, Rollout, plan  # noqa: E402
from megatron_hpt.planning.presets import resolve_shape  # noqa: E402
from megatron_hpt.planning.steptime import GPUS, Efficiency, step_seconds  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/plan.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="named size or HF dir / config.json")
    c = p.add_argument_group("cluster")
    c.add_argument("--nodes", type=int, default=1)
    c.add_argument("--gpus-per-node", type=int, default=8)
    c.add_argument("--gpu", choices=sorted(GPUS), default="h100-80gb")
    c.add_argument("--gpu-memory-gib", type=float, default=None, help="default: the --gpu's")
    c.add_argument("--reserve-gib", type=float, default=3.0,
                   help="per-GPU memory outside the model: CUDA context, NCCL, fragmentation")
    g = p.add_argument_group("training layout (Megatron-LM flag names)")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None)
    g.add_argument("--context-parallel-size", type=int, default=1)
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--recompute-granularity", choices=["none", "selective", "full"], default="none")
    g.add_argument("--recompute-method", choices=["uniform", "block"], default="uniform")
    g.add_argument("--recompute-num-layers", type=int, default=1)
    g.add_argument("--use-distributed-optimizer", action="store_true")
    g.add_argument("--micro-batch-size", type=int, default=1)
    g.add_argument("--seq-length", type=int, default=4096)
    g.add_argument("--fp32", action="store_true", help="fp32 training (default bf16)")
    g.add_argument("--offload-train", action="store_true",
                   help="params, grads and optimizer leave the GPU for the rollout, as the "
                        "trainer's --offload-train does (its default with vllm on CUDA; "
                        "training/colocation.py); off here unless given, and never suggested")
    r = p.add_argument_group("rollout")
    r.add_argument("--rollout-tensor-parallel-size", type=int, default=None,
                   help="vLLM engine TP (default: the training TP)")
    r.add_argument("--rollout-gpu-memory-utilization", type=float, default=0.5)
    r.add_argument("--rollout-batch-size", type=int, default=128)
    r.add_argument("--n-samples-per-prompt", type=int, default=8)
    r.add_argument("--rollout-max-prompt-len", type=int, default=1024)
    r.add_argument("--rollout-max-response-len", type=int, default=3072)
    r.add_argument("--rollout-weight-bucket-mb", type=int, default=1024)
    r.add_argument("--vllm-overhead-gib", type=float, default=3.0)
    e = p.add_argument_group("estimates")
    e.add_argument("--mfu", type=float, default=0.40)
    e.add_argument("--bandwidth-fraction", type=float, default=0.6)
    e.add_argument("--no-search", action="store_true", help="do not look for a fitting layout")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def from_args(a):
    shape = resolve_shape(a.model)
    mem = a.gpu_memory_gib if a.gpu_memory_gib is not None else GPUS[a.gpu][2]
    cluster = Cluster(a.nodes, a.gpus_per_node, mem, a.reserve_gib)
    per_stage = shape.num_layers // max(1, a.pipeline_model_parallel_size)
    vpp = 1
    if a.num_layers_per_virtual_pipeline_stage:
        if per_stage % a.num_layers_per_virtual_pipeline_stage:
            raise SystemExit(f"--num-layers-per-virtual-pipeline-stage "
                             f"{a.num_layers_per_virtual_pipeline_stage} does not divide the "
                             f"{per_stage} layers per pipeline stage")
        vpp = per_stage // a.num_layers_per_virtual_pipeline_stage
    lay = Layout(a.tensor_model_parallel_size, a.pipeline_model_parallel_size, vpp,
                 a.context_parallel_size, a.sequence_parallel, a.recompute_granularity,
                 a.recompute_method, a.recompute_num_layers, a.use_distributed_optimizer,
                 a.micro_batch_size, a.seq_length, not a.fp32, a.offload_train)
    ro = Rollout(a.rollout_tensor_parallel_size or a.tensor_model_parallel_size,
                 a.rollout_gpu_memory_utilization, a.rollout_batch_size, a.n_samples_per_prompt,
                 a.rollout_max_prompt_len, a.rollout_max_response_len, a.rollout_weight_bucket_mb,
                 a.vllm_overhead_gib)
    return shape, cluster, lay, ro


def report(shape, cluster, lay, ro, p, times) -> str:
    lines = [f"layout: {lay.describe()} | rollout TP{ro.tp} util {ro.gpu_memory_utilization:g}"
             f" | {cluster.nodes}x{cluster.gpus_per_node} GPUs of {cluster.gpu_memory_gib:g} GiB"]
    if not p.phases:
        return "\n".join(lines + [f"  invalid: {r}" for r in p.reasons])
    i = p.info
    lines.append(f"  params {i['total_params'] / 1e9:.2f}B total, {i['params_per_rank'] / 1e9:.3f}B "
                 f"on the worst rank (stage {i['worst_stage']}); DP {i['dp']}, "
                 f"{i['micro_batches']} micro-batches per step ({i['rows']} rows)")
    for phase in ("train", "sync", "rollout"):
        items = ", ".join(f"{k} {v / GiB:.1f}" for k, v in p.phases[phase].items())
        lines.append(f"  {phase:8s} {p.total(phase) / GiB:6.1f} GiB  "
                     f"{'fits' if p.fits[phase] else 'DOES NOT FIT'}  ({items})")
    lines.append(f"  KV cache: {i['kv_capacity_tokens']:.0f} tokens/GPU = {i['concurrency']:.0f} "
                 f"full-length sequences per engine ({i['rows_per_engine']} rows per engine, "
                 f"{i['engines']} engines)")
    if times:
        lines.append(f"  step estimate: train {times['train']:.0f} s + rollout {times['rollout']:.0f} s"
                     " (assumed MFU / bandwidth; not measured)")
    lines += [f"  REFUSED: {r}" for r in p.reasons]
    return "\n".join(lines)


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    shape, cluster, lay, ro = from_args(a)
    eff = Efficiency(a.mfu, a.bandwidth_fraction)
    p = plan(shape, cluster, lay, ro)
    times = step_seconds(shape, cluster, lay, ro, p, a.gpu, eff) if p.phases else None
    nearest = None
    if not p.ok and not a.no_search:
        from megatron_hpt.planning.search import nearest_fitting
        nearest = nearest_fitting(shape, cluster, lay, ro, a.gpu)
    if a.json:
        out = dict(layout=dataclasses.asdict(lay), rollout=dataclasses.asdict(ro), fits=p.fits,
                   ok=p.ok, reasons=p.reasons, phases_gib={k: {i: v / GiB for i, v in d.items()}
                                                          for k, d in p.phases.items()},
                   info=p.info, step_seconds=times)
        if nearest:
            out["nearest"] = dict(layout=dataclasses.asdict(nearest[0]),
                                  rollout=dataclasses.asdict(nearest[1]), changes=nearest[3])
        print(json.dumps(out, indent=1))
    else:
        print(report(shape, cluster, lay, ro, p, times))
        if nearest:
            print("nearest layout that fits: " + "; ".join(nearest[3]))
            print(report(shape, cluster, nearest[0], nearest[1], nearest[2], nearest[4]))
        elif not p.ok and not a.no_search:
            print("no layout of this cluster fits; add nodes or shorten --seq-length")
    return 0 if p.ok else 1


if __name__ == "__main__":
    sys.exit(main())
