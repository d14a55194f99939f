"""``python -m megatron_hpt.train``: the training loop, top-down.

    flags -> config -> process groups -> model + optimizer (+ checkpoint)
    for each iteration: this rank's micro-batches (SFT rows, or rollouts -> rewards -> gate ->
                        advantages for RL/hybrid presets) -> step -> log -> eval -> save

Launch: ``python -m megatron_hpt.train ...`` (one process), ``torchrun --nproc-per-node N -m
megatron_hpt.train ...`` or ``srun python -m megatron_hpt.train ...`` (rank/world from Slurm).
"""
from __future__ import annotations

import sys
import time
import traceback
from typing import Dict, List, Optional

from megatron_hpt.arguments import ConfigError
from megatron_hpt.training import colocation, distributed, preflight, resume
from megatron_hpt.training.checkpoint import load_checkpoint
from megatron_hpt.training.logging import MetricsLogger, format_iteration_line, is_logging_rank
from megatron_hpt.training.nonfinite import NonFiniteStop, SkipCounter, assert_finite_weights
from megatron_hpt.training.save_extras import write_save_extras
from megatron_hpt.training.setup import build_model, build_optimizer
from megatron_hpt.training.signals import ExitSignalHandler
from megatron_hpt.training.step import train_step
from megatron_hpt.training.tasks import build_task


def run(argv: Optional[List[str]] = None) -> Dict[str, object]:
    """Train as the flags say; returns {"metrics": [per-iteration dicts], "model": chunks, ...}."""
    # every check (flags, data, --save, --load) before any process group, model or rollout
    args, world, tokenizer, cfg, prompts = preflight.prepare(argv)

    distributed.initialize(cfg.parallel.tensor_model_parallel_size,
                           cfg.parallel.pipeline_model_parallel_size,
                           cfg.parallel.context_parallel_size, seed=cfg.seed,
                           virtual_pipeline_model_parallel_size=(
                               cfg.parallel.virtual_pipeline_model_parallel_size),
                           timeout_minutes=cfg.parallel.distributed_timeout_minutes)
    model = build_model(cfg)
    optimizer, scheduler = build_optimizer(cfg, model)
    start = 0
    if cfg.load:
        start = load_checkpoint(cfg.load, model, None if cfg.no_load_optim else optimizer,
                                scheduler, finetune=cfg.finetune)
    task = build_task(cfg, tokenizer, model, prompts)
    colocation.attach(cfg, task, model, optimizer)  # --offload-train: state leaves the GPU in rollouts
    history, skips = [], SkipCounter(cfg.max_skipped_iterations)
    if cfg.load and not cfg.finetune:
        resume.restore(cfg, task, skips)  # RNG (unless --no-load-rng), pending rollouts, skips
    logger = MetricsLogger(cfg.tensorboard_dir, cfg.log_interval)
    if cfg.save and distributed.dist.get_rank() == 0:
        write_save_extras(cfg.save, tokenizer, cfg.hf_model)  # for tools/convert_megatron_to_hf.py

    exit_handler = ExitSignalHandler(cfg.exit_signal) if cfg.exit_signal else None
    saved_at = None
    for iteration in range(start, cfg.train_iters):
        t0 = time.perf_counter()
        micro_batches = task.micro_batches(iteration)
        task.attach_normalizers(micro_batches)
        metrics = train_step(model, optimizer, scheduler, micro_batches, task.loss_fn,
                             cfg.seq_length, cfg.skip_grad_norm_above)
        metrics.update(task.after_step())
        skipped_total = skips.update(bool(metrics["skipped"]))
        elapsed_ms = (time.perf_counter() - t0) * 1000
        line = format_iteration_line(iteration + 1, cfg.train_iters, metrics, elapsed_ms,
                                     (iteration + 1) * cfg.global_batch_size,
                                     cfg.global_batch_size, skipped_total)
        logger.log(iteration + 1, line, metrics)
        skips.check(iteration + 1, metrics)  # NonFiniteStop after --max-skipped-iterations in a row
        if cfg.eval_interval and (iteration + 1) % cfg.eval_interval == 0:
            metrics.update(task.evaluate(model))
            if is_logging_rank():
                print(f" evaluation at iteration {iteration + 1}: "
                      f"greedy accuracy {metrics.get('eval greedy accuracy', float('nan')):.3f}",
                      flush=True)
        history.append(dict(metrics, iteration=iteration + 1))
        if cfg.save and cfg.save_interval and (iteration + 1) % cfg.save_interval == 0:
            assert_finite_weights(model, iteration + 1, cfg.save)
            resume.save(cfg, iteration + 1, model, optimizer, scheduler, task, skips)
            saved_at = iteration + 1
        if exit_handler is not None and exit_handler.should_exit():
            if cfg.save and saved_at != iteration + 1:
                assert_finite_weights(model, iteration + 1, cfg.save)
                resume.save(cfg, iteration + 1, model, optimizer, scheduler, task, skips)
            if is_logging_rank():
                print(f" exiting on {cfg.exit_signal} after iteration {iteration + 1} "
                      f"(checkpoint saved: {bool(cfg.save)})", flush=True)
            break
    else:
        if cfg.save and start < cfg.train_iters and not (
                cfg.save_interval and cfg.train_iters % cfg.save_interval == 0):
            assert_finite_weights(model, cfg.train_iters, cfg.save)
            resume.save(cfg, cfg.train_iters, model, optimizer, scheduler, task, skips)
    if exit_handler is not None:
        exit_handler.restore()
    summary = task.finish(model)
    if summary and is_logging_rank():
        print(" | ".join(f"{k}: {v}" for k, v in summary.items()), flush=True)
    logger.close()
    return {"metrics": history, "model": model, "config": cfg, "summary": summary}


def main(argv: Optional[List[str]] = None) -> int:
    try:
        run(argv)
    except ConfigError as e:  # bad input: one line (from rank 0), nothing written
        if distributed.world_from_env().rank == 0:
            print(f"megatron_hpt.train: error: {preflight.one_line(e)}", file=sys.stderr)
        return 2
    except NonFiniteStop as e:  # every rank raises it together; rank 0 says why
        if not distributed.dist.is_initialized() or distributed.dist.get_rank() == 0:
            print(f"megatron_hpt.train: {e}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:  # noqa: BLE001 - a failure during the run: the reason, then stop
        traceback.print_exc()
        peer = any(s in str(e) for s in ("Connection reset by peer", "Connection closed by peer",
                                         "Broken pipe"))
        print(f"megatron_hpt.train: rank {distributed.world_from_env().rank}: stopped: "
              + ("another rank stopped or died (its log has the reason): " if peer else "")
              + f"{type(e).__name__}: {preflight.one_line(e)}", file=sys.stderr, flush=True)
        return 1
    finally:
        if distributed.dist.is_initialized():
            distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
