"""Signal selection per prompt: which rows of a step train on which branch (DESIGN §1).

The CHORD μ schedule and the EGSPO entropy gate live in the loss head (``loss/schedule.py``,
``loss/egspo.py``) because they act per token inside the loss; the HPT gate acts per prompt
before the loss and is here."""
from .hpt_gate import HPT_SOFT_TABLE, BranchCoefficients, hpt_branch_coefficients

__all__ = ["HPT_SOFT_TABLE", "BranchCoefficients", "hpt_branch_coefficients"]
