import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))


import pytest  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_process_group_per_module():
    """Tests that start a one-process group in the pytest process itself (engines, samplers)
    share it within their module; it is torn down after the module, so that a later module
    (e.g. the planner, which builds its own one-rank world) starts from none."""
    yield
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        from megatron_hpt.training import distributed
        distributed.destroy()
