"""Rank entry points of test_nonfinite: the real trainer with faults injected around its step."""
from __future__ import annotations

import io
from contextlib import redirect_stderr


def _adam_moments(optimizer):
    out = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for state in opt.optimizer.state.values():
            out += [state[k].detach().clone() for k in ("exp_avg", "exp_avg_sq") if k in state]
    return out


def train_with_faults(argv: list, faults: dict) -> dict:
    """Run ``megatron_hpt.train.main(argv)`` with ``faults[call]`` applied at the given call of
    ``train_step`` (1-based): ``"grad"`` multiplies the loss by NaN (its metrics stay finite, the
    gradients become NaN), ``"loss"`` reports a NaN ``lm loss`` with finite gradients. Returns the
    exit code, stderr, and per call: whether the weights, Adam's moments and the LR-schedule
    step count changed, and the metrics."""
    import torch
    import megatron_hpt.train as trainer

    real = trainer.train_step
    calls = []

    def step(model, optimizer, scheduler, micro_batches, loss_fn, seq_length, *rest):
        fault = faults.get(len(calls) + 1)
        if fault == "grad":
            def fn(logits, batch):
                loss, n, metrics = loss_fn(logits, batch)
                return loss * float("nan"), n, metrics
        elif fault == "loss":
            def fn(logits, batch):
                loss, n, metrics = loss_fn(logits, batch)
                return loss, n, dict(metrics, **{"lm loss": metrics["lm loss"] * float("nan")})
        else:
            fn = loss_fn
        if fn is not loss_fn:
            fn.additive_metrics = getattr(loss_fn, "additive_metrics", ("lm loss",))
        weights = [p.detach().clone() for c in model for p in c.parameters()]
        moments, sched = _adam_moments(optimizer), scheduler.num_steps
        metrics = real(model, optimizer, scheduler, micro_batches, fn, seq_length, *rest)
        after = [p.detach() for c in model for p in c.parameters()]
        moments_after = _adam_moments(optimizer)
        calls.append(dict(
            weights_changed=any(not torch.equal(a, b) for a, b in zip(weights, after)),
            moments_changed=len(moments) != len(moments_after) or
            any(not torch.equal(a, b) for a, b in zip(moments, moments_after)),
            schedule_steps=scheduler.num_steps - sched, metrics=dict(metrics)))
        return metrics

    trainer.train_step = step
    err = io.StringIO()
    with redirect_stderr(err):
        rc = trainer.main(argv)
    return dict(rc=rc, stderr=err.getvalue(), calls=calls)
