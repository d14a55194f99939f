"""Memory and step-time planning for a model x cluster x layout x rollout (``tools/plan.py``)."""
