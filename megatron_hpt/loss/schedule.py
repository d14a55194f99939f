"""CHORD's μ schedule (SPEC §4.3): linear warm-up to μ_peak, cosine decay to μ_valley."""
from __future__ import annotations

import math


def mu_at_step(step: int, cfg) -> float:
    """μ at optimizer ``step`` for ``cfg.mu_schedule``; ``step`` is the step number as
    Trinity-RFT counts it (``global_steps``, 1 for the first optimizer step): the trainer
    passes iteration + 1 (hybrid/gate_rows.chord_step).

    none → 0 (no mixing); constant → μ_peak; chord → μ_peak·step/warmup during the
    ``mu_warmup_steps``, then μ_valley + (μ_peak − μ_valley)·½(1 + cos(π·k/decay)) for
    k = step − warmup < ``mu_decay_steps``, then μ_valley (Trinity-RFT's CHORD schedule).
    """
    if cfg.mu_schedule == "none":
        return 0.0
    if cfg.mu_schedule == "constant":
        return float(cfg.mu_peak)
    if step < cfg.mu_warmup_steps:
        return cfg.mu_peak * step / cfg.mu_warmup_steps
    k = step - cfg.mu_warmup_steps
    if k >= cfg.mu_decay_steps:
        return float(cfg.mu_valley)
    cosine = 0.5 * (1.0 + math.cos(math.pi * k / cfg.mu_decay_steps))
    return cfg.mu_valley + (cfg.mu_peak - cfg.mu_valley) * cosine
