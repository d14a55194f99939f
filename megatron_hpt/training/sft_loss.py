"""Token-mean next-token cross-entropy on vocab-parallel logits (the trainer's SFT loss)."""
from __future__ import annotations

import torch
from megatron.core import tensor_parallel


def token_mean_nll(logits: torch.Tensor, batch) -> tuple:
    """Σ_t mask·NLL / N_global, N_global = response tokens of the whole global batch
    (``batch["normalizer"]``, computed once per step). Logits: [b, s, V/TP]."""
    # [b, s] per-token NLL; the TP all-reduces (max, Σexp, target logit) happen inside megatron.
    nll = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), batch["labels"])
    mask = batch["loss_mask"]
    loss = (nll * mask).sum() / batch["normalizer"]
    return loss, mask.sum().int(), {"lm loss": loss}
