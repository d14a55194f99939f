"""Evaluation: avg@k / pass@k estimators and greedy accuracy on held-out problems."""
from megatron_hpt.eval.metrics import avg_at_k, pass_at_k

__all__ = ["avg_at_k", "pass_at_k"]
