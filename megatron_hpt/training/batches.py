"""Global batch -> this DP rank's micro-batches (what moves: nothing; every rank slices the same
deterministic global batch)."""
from __future__ import annotations

from typing import List

from megatron.core import parallel_state

from megatron_hpt.loss.batch import Batch


def split_for_rank(global_batch: Batch, micro_batch_size: int, device=None) -> List[Batch]:
    """Rows [dp_rank * n_local, (dp_rank+1) * n_local) of the global batch, moved to ``device``
    in one go (when given), cut into micro-batches."""
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    n_local = global_batch.num_rows // dp_size
    lo = dp_rank * n_local
    local = global_batch.select(slice(lo, lo + n_local))
    if device is not None:
        local = local.to(device)
    return local.split(micro_batch_size)
