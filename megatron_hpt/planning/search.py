"""The nearest layout that fits: fewest changed knobs, then the shortest estimated step.

Candidates: TP in {1, 2, 4, 8} up to a node, PP dividing the layers, VPP dividing the layers per
stage (up to 8), SP on or off when TP > 1, recompute none / selective / full-uniform-1, the
distributed optimizer, micro-batch 1 or the given one (offload only as given), rollout TP in
{1, 2, 4, 8} and memory fractions 0.4-0.7. Sequence length, batch sizes and the cluster are never
changed: they are the experiment.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import List, Optional, Tuple

from megatron_hpt.models.shape import ModelShape
from megatron_hpt.planning.memory import Cluster, Layout, Plan, Rollout, layout_errors, plan
from megatron_hpt.planning.params import prefetch
from megatron_hpt.planning.steptime import step_seconds

_KNOBS = ("tp", "pp", "vpp", "sequence_parallel", "recompute_granularity", "distributed_optimizer",
          "micro_batch_size", "offload")


def _changes(a: Layout, b: Layout, ra: Rollout, rb: Rollout) -> List[str]:
    ch = [f"{k}: {getattr(a, k)} -> {getattr(b, k)}" for k in _KNOBS if getattr(a, k) != getattr(b, k)]
    for k in ("tp", "gpu_memory_utilization"):
        if getattr(ra, k) != getattr(rb, k):
            ch.append(f"rollout {k}: {getattr(ra, k)} -> {getattr(rb, k)}")
    return ch


def candidates(shape: ModelShape, cluster: Cluster, lay: Layout, ro: Rollout):
    tps = [t for t in (1, 2, 4, 8) if t <= cluster.gpus_per_node]
    pps = [p for p in range(1, shape.num_layers + 1) if shape.num_layers % p == 0
           and cluster.world_size % p == 0 and p <= 16]
    prefetch(shape, pps)
    for tp, pp in itertools.product(tps, pps):
        per_stage = shape.num_layers // pp
        vpps = [1] + ([v for v in range(2, 9) if per_stage % v == 0] if pp > 1 else [])
        sps = (False, True) if tp > 1 else (False,)
        for vpp, sp, rec, dopt, mbs, off, rtp in itertools.product(
                vpps, sps, ("none", "selective", "full"), sorted({lay.distributed_optimizer, True}),
                sorted({1, lay.micro_batch_size}), (lay.offload,), sorted({1, 2, 4, 8, ro.tp})):
            new = dataclasses.replace(
                lay, tp=tp, pp=pp, vpp=vpp, sequence_parallel=sp, recompute_granularity=rec,
                recompute_method="uniform", recompute_num_layers=1, distributed_optimizer=dopt,
                micro_batch_size=mbs, offload=off)
            if rec == lay.recompute_granularity:
                new = dataclasses.replace(new, recompute_method=lay.recompute_method,
                                          recompute_num_layers=lay.recompute_num_layers)
            for util in sorted({ro.gpu_memory_utilization, 0.4, 0.5, 0.6, 0.7}):
                r = dataclasses.replace(ro, tp=rtp, gpu_memory_utilization=util)
                if not layout_errors(shape, cluster, new, r):
                    yield new, r


def nearest_fitting(shape: ModelShape, cluster: Cluster, lay: Layout, ro: Rollout,
                    gpu: str = "h100-80gb") -> Optional[Tuple[Layout, Rollout, Plan, List[str], dict]]:
    """(layout, rollout, plan, changes, step seconds) of the closest fitting layout, or None."""
    best, best_key = None, None
    for new, r in candidates(shape, cluster, lay, ro):
        ch = _changes(lay, new, ro, r)
        if best_key is not None and len(ch) > best_key[0]:
            continue
        p = plan(shape, cluster, new, r)
        if not p.ok:
            continue
        t = step_seconds(shape, cluster, new, r, p, gpu)
        key = (len(ch), t["train"] + t["rollout"])
        if best_key is None or key < best_key:
            best, best_key = (new, r, p, ch, t), key
    return best
