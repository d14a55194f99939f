"""Per-GPU bytes of each phase of a colocated RL step, and whether they fit.

Phases (one GPU holds both the Megatron trainer and one vLLM engine shard):

- ``train``: bf16 params (2 B/param) + fp32 main-grad buffer (4 B; megatron DDP with
  ``grad_reduce_in_fp32``) + optimizer (fp32 main params, Adam m and v: 12 B, divided over
  DP x CP with the distributed optimizer) + activations in flight under 1F1B (``activations.py``)
  + the loss transient on the last stage (bf16 logits [s·b, V/t] saved, their bf16 gradient, and
  the loss head's fp32 workspace of at most 4096 rows) + the reserve (CUDA context, NCCL buffers,
  allocator fragmentation: not seen by the model, a flag).
  With ``--bf16`` off (fp32) params/grads are 4 B and Adam keeps no main copy (8 B).
- ``sync``: the weight stream into a woken vLLM: the trainer's bf16 params + vLLM's weights + two
  buckets (``--rollout-weight-bucket-mb``: the gathered bucket and its send copy) + reserve.
  With offload, grads and optimizer state are on the host; without, they are still here.
- ``rollout``: vLLM takes ``gpu_memory_utilization`` x GPU memory (weights, profile-run peak,
  CUDA graphs, the rest KV cache); what training leaves resident is added (nothing when params,
  grads and optimizer are offloaded; everything otherwise), plus the reserve.
  KV per token per GPU = 2 (k, v) · L · max(1, g / TP_rollout) · d · 2 B.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from megatron_hpt.models.shape import ModelShape
from megatron_hpt.planning.activations import ActivationSpec, stage_activation_bytes
from megatron_hpt.planning.params import params_per_rank

GiB = 1 << 30
LOSS_CHUNK_ROWS = 4096  # megatron_hpt.loss.logprob.DEFAULT_CHUNK_SIZE


@dataclass(frozen=True)
class Cluster:
    nodes: int = 1
    """Nodes."""
    gpus_per_node: int = 8
    """GPUs per node."""
    gpu_memory_gib: float = 80.0
    """Usable memory of one GPU (H100-80GB: 79.1 GiB reported by nvidia-smi; 80 is the label)."""
    reserve_gib: float = 3.0
    """Per-GPU memory the model does not see: CUDA context (~0.5), NCCL buffers, fragmentation."""

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    """--tensor-model-parallel-size."""
    pp: int = 1
    """--pipeline-model-parallel-size."""
    vpp: int = 1
    """Virtual stages per pipeline stage (num_layers / (PP x --num-layers-per-virtual-pipeline-stage))."""
    cp: int = 1
    """--context-parallel-size."""
    sequence_parallel: bool = False
    """--sequence-parallel."""
    recompute_granularity: str = "none"
    """--recompute-granularity (none | selective | full)."""
    recompute_method: str = "uniform"
    """--recompute-method."""
    recompute_num_layers: int = 1
    """--recompute-num-layers."""
    distributed_optimizer: bool = False
    """--use-distributed-optimizer."""
    micro_batch_size: int = 1
    """--micro-batch-size."""
    seq_length: int = 4096
    """--seq-length (prompt + response)."""
    bf16: bool = True
    """--bf16 (else fp32 everything)."""
    offload: bool = False
    """Training state leaves the GPU before rollout (training/offload.py)."""

    def describe(self) -> str:
        rec = self.recompute_granularity
        if rec == "full":
            rec = f"full/{self.recompute_method}/{self.recompute_num_layers}"
        return (f"TP{self.tp} PP{self.pp}" + (f" VPP{self.vpp}" if self.vpp > 1 else "")
                + (f" CP{self.cp}" if self.cp > 1 else "") + (" SP" if self.sequence_parallel else "")
                + f" recompute={rec}" + (" distopt" if self.distributed_optimizer else "")
                + f" mbs={self.micro_batch_size} seq={self.seq_length}"
                + (" offload" if self.offload else ""))


@dataclass(frozen=True)
class Rollout:
    tp: int = 1
    """--rollout-tensor-parallel-size (vLLM engine TP)."""
    gpu_memory_utilization: float = 0.5
    """--rollout-gpu-memory-utilization."""
    batch_size: int = 128
    """--rollout-batch-size (prompts per step)."""
    n: int = 8
    """--n-samples-per-prompt."""
    prompt_length: int = 1024
    """Longest prompt in tokens."""
    response_length: int = 3072
    """--rollout-max-response-len."""
    weight_bucket_mb: int = 1024
    """--rollout-weight-bucket-mb."""
    vllm_overhead_gib: float = 3.0
    """vLLM's profile-run activations + sampler + CUDA graphs inside its fraction (not KV)."""
    demonstrations_per_prompt: int = 1
    """Rows per prompt besides the rollouts (HPT/LUFFY: the demonstration)."""


@dataclass
class Plan:
    phases: Dict[str, Dict[str, float]] = field(default_factory=dict)
    """phase -> {item: bytes} for the worst GPU of the phase (items sum to the phase total)."""
    fits: Dict[str, bool] = field(default_factory=dict)
    """phase -> whether it fits in GPU memory."""
    reasons: List[str] = field(default_factory=list)
    """Why a phase does not fit / why the layout is invalid."""
    info: Dict[str, float] = field(default_factory=dict)
    """Derived numbers: dp, micro-batches, params per rank, KV capacity, concurrency, ..."""

    @property
    def ok(self) -> bool:
        return not self.reasons and all(self.fits.values())

    def total(self, phase: str) -> float:
        return sum(self.phases[phase].values())


def layout_errors(shape: ModelShape, cluster: Cluster, lay: Layout, ro: Rollout) -> List[str]:
    """Why this layout cannot be launched at all (megatron's and vLLM's divisibility rules)."""
    e, world = [], cluster.world_size
    mp = lay.tp * lay.pp * lay.cp
    if world % mp:
        e.append(f"world {world} not divisible by TP x PP x CP = {mp}")
    if shape.num_attention_heads % lay.tp or shape.num_query_groups % lay.tp:
        e.append(f"TP {lay.tp} must divide heads {shape.num_attention_heads} and KV groups "
                 f"{shape.num_query_groups}")
    if shape.num_layers % (lay.pp * lay.vpp):
        e.append(f"layers {shape.num_layers} not divisible by PP x VPP = {lay.pp * lay.vpp}")
    if lay.vpp > 1 and lay.pp == 1:
        e.append("VPP needs PP > 1")
    if lay.sequence_parallel and lay.tp == 1:
        e.append("--sequence-parallel needs TP > 1")
    if lay.tp > cluster.gpus_per_node:
        e.append(f"TP {lay.tp} spans nodes ({cluster.gpus_per_node} GPUs per node)")
    if world % ro.tp or shape.num_attention_heads % ro.tp:
        e.append(f"rollout TP {ro.tp} must divide the world {world} and heads")
    if lay.seq_length > shape.max_position_embeddings:
        e.append(f"seq {lay.seq_length} exceeds the model's {shape.max_position_embeddings} positions")
    if ro.prompt_length + ro.response_length > lay.seq_length:
        e.append(f"prompt {ro.prompt_length} + response {ro.response_length} exceed seq "
                 f"{lay.seq_length}")
    return e


def plan(shape: ModelShape, cluster: Cluster, lay: Layout, ro: Rollout) -> Plan:
    """Bytes per GPU in each phase and whether each fits (see module docstring)."""
    out = Plan()
    out.reasons = layout_errors(shape, cluster, lay, ro)
    if out.reasons:
        return out
    world, mem = cluster.world_size, cluster.gpu_memory_gib * GiB
    dp = world // (lay.tp * lay.pp * lay.cp)
    rows = ro.batch_size * (ro.n + ro.demonstrations_per_prompt)
    m = max(1, rows // (lay.micro_batch_size * dp))
    eps = 2 if lay.bf16 else 4
    reserve = cluster.reserve_gib * GiB
    spec = ActivationSpec(lay.seq_length, lay.micro_batch_size, lay.tp, lay.cp,
                          lay.sequence_parallel, lay.recompute_granularity, lay.recompute_method,
                          lay.recompute_num_layers, eps, "gpu")
    vocab_local = shape.vocab_size // lay.tp
    tokens = lay.seq_length // lay.cp * lay.micro_batch_size
    loss = 2 * eps * tokens * vocab_local + 4 * min(tokens, LOSS_CHUNK_ROWS) * vocab_local
    worst = None
    for stage in sorted({0, lay.pp - 1}):
        n = params_per_rank(shape, lay.tp, lay.pp, stage)
        opt_per_param = 12 if lay.bf16 else 8
        shard = dp * lay.cp if lay.distributed_optimizer else 1
        items = {
            "params": eps * n,
            "grads": 4 * n,
            "optimizer": opt_per_param * n / shard,
            "activations": stage_activation_bytes(shape, spec, lay.pp, lay.vpp, stage, m),
            "loss transient": loss if stage == lay.pp - 1 else 0,
            "reserve": reserve,
        }
        if worst is None or sum(items.values()) > sum(worst[1].values()):
            worst = (stage, items, n)
    stage, train, n = worst
    out.phases["train"] = train
    out.info.update(dp=dp, micro_batches=m, worst_stage=stage, params_per_rank=n,
                    rows=rows)
    # ---- rollout ----
    from megatron_hpt.planning.params import total_params, stage_params
    engines = world // ro.tp
    w_vllm = 2 * stage_params(shape, 1, 0).per_rank(ro.tp)
    kv_heads = max(1, shape.num_query_groups // ro.tp)
    kv_token = 2 * shape.num_layers * kv_heads * shape.kv_channels * 2
    vllm_total = ro.gpu_memory_utilization * mem
    kv_cap = vllm_total - w_vllm - ro.vllm_overhead_gib * GiB
    seq_tokens = ro.prompt_length + ro.response_length
    concurrency = max(0.0, kv_cap) / (kv_token * seq_tokens)
    rows_per_engine = -(-ro.batch_size * ro.n // engines)
    resident = 0 if lay.offload else train["params"] + train["grads"] + train["optimizer"]
    out.phases["rollout"] = {"training state resident": resident, "vllm weights": w_vllm,
                             "vllm overhead": ro.vllm_overhead_gib * GiB,
                             "kv cache": max(0.0, kv_cap), "reserve": reserve}
    bucket = 2 * ro.weight_bucket_mb * (1 << 20)
    out.phases["sync"] = {"train params": train["params"],
                          "grads + optimizer": 0 if lay.offload else train["grads"] + train["optimizer"],
                          "vllm weights": w_vllm, "buckets": bucket, "reserve": reserve}
    out.info.update(total_params=total_params(shape), engines=engines, kv_bytes_per_token=kv_token,
                    kv_capacity_tokens=max(0.0, kv_cap) / kv_token, concurrency=concurrency,
                    rows_per_engine=rows_per_engine)
    for phase in ("train", "sync", "rollout"):
        out.fits[phase] = out.total(phase) <= mem
    if not out.fits["train"]:
        out.reasons.append(
            f"train: stage {stage} needs {out.total('train') / GiB:.1f} GiB > "
            f"{cluster.gpu_memory_gib:g} GiB (params {train['params'] / GiB:.1f}, grads "
            f"{train['grads'] / GiB:.1f}, optimizer {train['optimizer'] / GiB:.1f}"
            f"{'' if lay.distributed_optimizer else ' (no distributed optimizer)'}, activations "
            f"{train['activations'] / GiB:.1f} for {in_flight_desc(lay, stage, m)})")
    if not out.fits["sync"]:
        out.reasons.append(f"sync: weight stream needs {out.total('sync') / GiB:.1f} GiB > "
                           f"{cluster.gpu_memory_gib:g} GiB"
                           + ("" if lay.offload else " (grads and optimizer stay on the GPU)"))
    if not out.fits["rollout"]:
        out.reasons.append(
            f"rollout: vLLM's {ro.gpu_memory_utilization:g} x {cluster.gpu_memory_gib:g} GiB + "
            f"{resident / GiB:.1f} GiB of resident training state + reserve = "
            f"{out.total('rollout') / GiB:.1f} GiB > {cluster.gpu_memory_gib:g} GiB"
            + ("" if lay.offload else " (training state not offloaded)"))
    if concurrency < 1:
        out.fits["rollout"] = False
        out.reasons.append(
            f"rollout: KV cache {max(0.0, kv_cap) / GiB:.1f} GiB holds "
            f"{max(0.0, kv_cap) / kv_token:.0f} tokens < one {seq_tokens}-token sequence "
            f"(raise --rollout-gpu-memory-utilization or the rollout TP)")
    return out


def in_flight_desc(lay: Layout, stage: int, m: int) -> str:
    from megatron_hpt.planning.activations import in_flight_chunks
    k = in_flight_chunks(lay.pp, lay.vpp, stage, m)
    per = "model-chunk micro-batches" if lay.vpp > 1 else "micro-batches"
    sp = "SP" if lay.sequence_parallel else "no SP"
    return (f"{k} {per} in flight at seq {lay.seq_length}, {sp}, recompute "
            f"{lay.recompute_granularity}")
