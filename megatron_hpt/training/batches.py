"""Global batch -> this DP rank's micro-batches (what moves: nothing; every rank slices the same
deterministic global batch), plus the once-per-step global normalizer of SPEC §6."""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.distributed as dist
from megatron.core import parallel_state


def split_for_rank(global_batch: Dict[str, torch.Tensor], micro_batch_size: int
                   ) -> List[Dict[str, torch.Tensor]]:
    """Rows [dp_rank * n_local, (dp_rank+1) * n_local) of the global batch, cut into micro-batches."""
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    n = next(iter(global_batch.values())).shape[0]
    n_local = n // dp_size
    lo = dp_rank * n_local
    local = {k: v[lo:lo + n_local] for k, v in global_batch.items()}
    return [{k: v[i:i + micro_batch_size] for k, v in local.items()}
            for i in range(0, n_local, micro_batch_size)]


def global_token_count(micro_batches: List[Dict[str, torch.Tensor]], key: str = "loss_mask") -> float:
    """Σ of ``key`` over all micro-batches of all DP (and CP) ranks: one all-reduce per step."""
    local = torch.stack([mb[key].sum() for mb in micro_batches]).sum().double().reshape(1)
    dist.all_reduce(local, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    return float(local)
