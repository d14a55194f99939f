"""Checks of ``arguments.validate``, one message per problem naming the flag and the fix:
``layout_errors`` (what the parallel layout TP / PP / CP / DP, the precision flags, the
micro-batch flags and the model shape must satisfy together before any process group or tensor
exists) and ``run_flag_errors`` (the loop's own flags: skipping, grading workers, saving). The RL
task's checks are ``training/rl/config.rl_config_errors``, the performance flags'
``training/performance.performance_flag_errors``."""
from __future__ import annotations

from typing import List

import torch

from megatron_hpt.platform import cuda_available


def _te_available() -> bool:
    from megatron_hpt.models.provider import transformer_engine_available
    return transformer_engine_available()


def layout_errors(cfg, world_size: int) -> List[str]:
    """What is wrong with the layout, precision and batch flags of ``cfg`` (a TrainingConfig)
    for ``world_size`` processes."""
    par, s = cfg.parallel, cfg.shape
    tp, pp, cp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size, par.context_parallel_size
    errors: List[str] = []
    if world_size % (tp * pp * cp):
        errors.append(f"world size {world_size} is not divisible by TP x PP x CP = {tp}x{pp}x{cp}; "
                      f"launch a multiple of {tp * pp * cp} processes")
    if s.num_attention_heads % tp:
        errors.append(f"--num-attention-heads {s.num_attention_heads} is not divisible by "
                      f"--tensor-model-parallel-size {tp}; choose a TP size that divides it")
    if s.num_query_groups % tp:
        errors.append(f"--num-query-groups {s.num_query_groups} is not divisible by "
                      f"--tensor-model-parallel-size {tp}; choose a TP size that divides it")
    if s.vocab_size % tp:
        errors.append(f"vocabulary size {s.vocab_size} is not divisible by "
                      f"--tensor-model-parallel-size {tp}")
    if s.num_layers % pp:
        errors.append(f"--num-layers {s.num_layers} is not divisible by "
                      f"--pipeline-model-parallel-size {pp}; choose a PP size that divides it")
    if cp > 1 and cfg.seq_length % (2 * cp):
        errors.append(f"--seq-length {cfg.seq_length} is not a multiple of 2 x "
                      f"--context-parallel-size = {2 * cp} (load-balanced CP split)")
    needs_te = [name for name, on in (("--context-parallel-size > 1", cp > 1),
                                      ("--sequence-parallel", par.sequence_parallel),
                                      ("--fp8-format", cfg.fp8_format is not None),
                                      ("--transformer-impl transformer_engine",
                                       cfg.transformer_impl == "transformer_engine")) if on]
    if needs_te and not _te_available():
        errors.append(f"{', '.join(needs_te)} needs Transformer Engine, which is not installed: "
                      "on a CUDA machine run `pip install -e .[gpu]` (or use the Dockerfile), "
                      "or drop the flag")
    if par.sequence_parallel and tp == 1:
        errors.append("--sequence-parallel needs --tensor-model-parallel-size > 1")
    if par.use_distributed_optimizer and not cuda_available():
        errors.append("--use-distributed-optimizer needs CUDA (megatron-core shards optimizer state "
                      "in CUDA buffers); drop the flag on CPU")
    if cfg.fp8_format is not None and not cuda_available():
        errors.append("--fp8-format needs a CUDA GPU with FP8 support (Hopper or newer)")
    if cfg.params_dtype != torch.float32 and not cuda_available():
        errors.append("--bf16/--fp16 training needs CUDA here (megatron's mixed-precision optimizer "
                      "keeps CUDA main-grad buffers); drop the flag on CPU")
    dp = world_size // max(1, tp * pp * cp)
    per_step = cfg.micro_batch_size * max(dp, 1)
    if cfg.max_tokens_per_micro_batch is not None and cfg.max_tokens_per_micro_batch < cfg.seq_length:
        errors.append(f"--max-tokens-per-micro-batch {cfg.max_tokens_per_micro_batch} is less than "
                      f"--seq-length {cfg.seq_length}: a full-length row would fit nowhere")
    if cfg.sequence_packing and not cfg.max_tokens_per_micro_batch:
        errors.append("--sequence-packing needs --max-tokens-per-micro-batch (the size of a pack)")
    if cfg.sequence_packing and not (_te_available() and cuda_available()):
        errors.append("--sequence-packing needs THD attention (Transformer Engine on CUDA); on "
                      "this machine --max-tokens-per-micro-batch alone gives padded micro-batches")
    if cfg.sequence_packing and cp > 1:
        errors.append("--sequence-packing with --context-parallel-size > 1 is not supported "
                      "(the THD stream is not split over CP ranks); drop one of them")
    if cfg.max_tokens_per_micro_batch is None and cfg.global_batch_size % per_step:
        errors.append(f"--global-batch-size {cfg.global_batch_size} is not divisible by "
                      f"--micro-batch-size x data-parallel size = {cfg.micro_batch_size}x{dp}")
    if cfg.seq_length > s.max_position_embeddings:
        errors.append(f"--seq-length {cfg.seq_length} exceeds --max-position-embeddings "
                      f"{s.max_position_embeddings}")
    return errors


def run_flag_errors(cfg) -> List[str]:
    """What is wrong with the loop's flags: gradient-norm skipping, grader workers, saving."""
    errors: List[str] = []
    if cfg.skip_grad_norm_above is not None and not cfg.skip_grad_norm_above > 0:
        errors.append(f"--skip-grad-norm-above {cfg.skip_grad_norm_above} must be > 0")
    if cfg.reward_workers < 0:
        errors.append(f"--reward-workers {cfg.reward_workers} must be >= 0")
    if cfg.max_skipped_iterations < 1:
        errors.append(f"--max-skipped-iterations must be >= 1, got {cfg.max_skipped_iterations}")
    if cfg.save_interval is not None and not cfg.save:
        errors.append("--save-interval needs --save DIR")
    return errors
