"""Global batch -> this DP rank's micro-batches (what moves: nothing; every rank slices the same
deterministic global batch)."""
from __future__ import annotations

from typing import Dict, List

import torch
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
