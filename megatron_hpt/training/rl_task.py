"""Moved: the RL task is ``training/rl/`` (``training/rl/task.RlTask``, one module per step).
Kept so that older imports of ``megatron_hpt.training.rl_task`` keep working."""
from megatron_hpt.data.rows import rollout_rows
from megatron_hpt.training.rl.task import RlTask

__all__ = ["RlTask", "rollout_rows"]
