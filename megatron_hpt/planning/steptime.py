"""A rough step time: training FLOPs at an assumed MFU, decode at an assumed memory bandwidth.

Training (per token, Narayanan et al. 2021): 6·N forward + backward plus causal attention
6·L·s·(a·d) (12·L·s·a·d halved by the mask); full recompute adds one forward (2·N + 2·L·s·a·d),
selective adds the attention forward; the old-log-prob pass adds a forward. Pipeline bubble:
(p - 1) / (v · m). Rollout: each engine decodes ``response_length`` steps per wave; a step reads
the engine's weight shard plus the live KV from HBM; waves = rows per engine / concurrency.
These are planning estimates with their assumptions on the command line, not measurements.
"""
from __future__ import annotations

from dataclasses import dataclass

from megatron_hpt.models.shape import ModelShape
from megatron_hpt.planning.memory import Cluster, Layout, Plan, Rollout

#: name -> (dense bf16 FLOP/s, HBM bytes/s, memory GiB)
GPUS = {"h100-80gb": (989e12, 3.35e12, 80.0), "h200": (989e12, 4.8e12, 141.0),
        "a100-80gb": (312e12, 2.0e12, 80.0), "a100-40gb": (312e12, 1.55e12, 40.0),
        "b200": (2250e12, 8.0e12, 180.0)}


@dataclass(frozen=True)
class Efficiency:
    mfu: float = 0.40
    """Fraction of peak FLOP/s the training step reaches."""
    bandwidth_fraction: float = 0.6
    """Fraction of HBM bandwidth a decode step reaches."""


def step_seconds(shape: ModelShape, cluster: Cluster, lay: Layout, ro: Rollout, p: Plan,
                 gpu: str = "h100-80gb", eff: Efficiency = Efficiency()) -> dict:
    """{"train": s, "rollout": s} estimates for one RL step."""
    flops_peak, hbm, _ = GPUS[gpu]
    n = p.info["total_params"]
    s, L, ad = lay.seq_length, shape.num_layers, shape.num_attention_heads * shape.kv_channels
    tokens = p.info["rows"] * s
    fwd = 2 * n + 2 * L * s * ad
    per_token = 3 * fwd + fwd  # fwd + bwd, plus the old-log-prob forward
    if lay.recompute_granularity == "full":
        per_token += fwd
    elif lay.recompute_granularity == "selective":
        per_token += 2 * L * s * ad
    bubble = (lay.pp - 1) / (lay.vpp * p.info["micro_batches"])
    train = tokens * per_token / (cluster.world_size * flops_peak * eff.mfu) * (1 + bubble)
    weights = p.phases["rollout"]["vllm weights"]
    conc = max(1.0, min(p.info["concurrency"], p.info["rows_per_engine"]))
    waves = -(-p.info["rows_per_engine"] // int(conc))
    kv_live = conc * (ro.prompt_length + ro.response_length / 2) * p.info["kv_bytes_per_token"]
    decode = ro.response_length * (weights + kv_live) / (hbm * eff.bandwidth_fraction)
    prefill = 2 * n / ro.tp * p.info["rows_per_engine"] * ro.prompt_length / (flops_peak * eff.mfu)
    return {"train": train, "rollout": waves * decode + prefill}
