"""Command-line flags (Megatron-LM's names) -> dataclass configs, validated before allocation.

The megatron-core wheel has no ``megatron.training``, so the flags we use are redeclared here with
Megatron-LM's names and defaults, one ``add_*_arguments`` per group. ``build_config(args)`` turns
the namespace into a ``TrainingConfig`` once; library code never reads ``args``. Impossible
combinations raise ``ConfigError`` before any process group or tensor exists, naming the fix.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Optional

import torch

from megatron_hpt.models.hf_config import load_hf_config, shape_from_hf_config
from megatron_hpt.models.shape import ModelShape
from megatron_hpt.platform import cuda_available
from megatron_hpt.rewards import REWARDS
from megatron_hpt.training.config_checks import layout_errors, run_flag_errors
from megatron_hpt.training.performance import performance_flag_errors, virtual_pipeline_size
from megatron_hpt.training.colocation import (ColocationConfig, add_colocation_arguments,
                                              colocation_config_from_args, colocation_errors)
from megatron_hpt.rollout.config import RolloutConfig, add_rollout_arguments, rollout_config_from_args
from megatron_hpt.training.rl.config import (RlConfig, add_rl_arguments, rl_config_errors,
                                             rl_config_from_args, rows_per_rollout)


class ConfigError(ValueError):
    """A flag combination that cannot run; the message says what to change."""


# ============================ argument groups ============================

def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (Megatron-LM names; or --hf-model to read a config.json)")
    g.add_argument("--hf-model", default=None,
                   help="Hugging Face model directory: the model shape comes from its config.json")
    g.add_argument("--num-layers", type=int, default=None)
    g.add_argument("--hidden-size", type=int, default=None)
    g.add_argument("--ffn-hidden-size", type=int, default=None)
    g.add_argument("--num-attention-heads", type=int, default=None)
    g.add_argument("--num-query-groups", type=int, default=None,
                   help="key/value heads (grouped-query attention); default: as many as heads")
    g.add_argument("--group-query-attention", action="store_true",
                   help="accepted for Megatron-LM compatibility; --num-query-groups decides")
    g.add_argument("--kv-channels", type=int, default=None)
    g.add_argument("--seq-length", type=int, default=None, help="training sequence length")
    g.add_argument("--max-position-embeddings", type=int, default=None)
    g.add_argument("--normalization", choices=["RMSNorm", "LayerNorm"], default="LayerNorm")
    g.add_argument("--norm-epsilon", type=float, default=1e-5)
    g.add_argument("--swiglu", action="store_true")
    g.add_argument("--position-embedding-type", choices=["rope", "learned_absolute"],
                   default="learned_absolute")
    g.add_argument("--rotary-base", type=float, default=10000.0)
    g.add_argument("--rope-scaling-factor", type=float, default=None)
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true")
    g.add_argument("--disable-bias-linear", action="store_true")
    g.add_argument("--add-qkv-bias", action="store_true")
    g.add_argument("--qk-layernorm", action="store_true")
    g.add_argument("--vocab-size", type=int, default=None,
                   help="vocabulary rows; default: the tokenizer's, padded to a multiple of "
                        "--make-vocab-size-divisible-by (not x TP: the model is the same at any TP)")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    g.add_argument("--transformer-impl", choices=["local", "transformer_engine"], default=None,
                   help="layer spec; default: transformer_engine when CUDA and Transformer Engine "
                        "are present, local otherwise (models/provider.py)")


def add_parallel_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--context-parallel-size", type=int, default=1)
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--use-distributed-optimizer", action="store_true")
    g.add_argument("--overlap-grad-reduce", action="store_true")
    g.add_argument("--overlap-param-gather", action="store_true",
                   help="overlap the distributed optimizer's param all-gather with the next forward")
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None,
                   help="interleaved 1F1B: layers per model chunk (num_layers / PP / this chunks)")
    g.add_argument("--recompute-granularity", choices=["full", "selective"], default=None,
                   help="full: recompute whole layers; selective: core attention only")
    g.add_argument("--recompute-method", choices=["uniform", "block"], default=None,
                   help="with full: blocks of N layers (uniform) or the first N of a stage (block)")
    g.add_argument("--recompute-num-layers", type=int, default=None)
    g.add_argument("--distributed-timeout-minutes", type=int, default=10,
                   help="timeout of collectives (NCCL/gloo) before a hung rank fails the job")


def add_precision_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("precision")
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--fp16", action="store_true")
    g.add_argument("--fp8-format", choices=["e4m3", "hybrid"], default=None,
                   help="FP8 through Transformer Engine (GPU only)")
    g.add_argument("--fp8-recipe", choices=["delayed", "tensorwise", "blockwise", "mxfp8"],
                   default="delayed")


def add_optimizer_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimizer and learning-rate schedule")
    g.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-decay-style", choices=["constant", "linear", "cosine", "inverse-square-root"],
                   default="constant")
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--lr-decay-iters", type=int, default=None)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.999)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--skip-grad-norm-above", type=float, default=None,
                   help="skip the optimizer step (no update, counted as skipped) when the "
                        "gradient norm exceeds this value (released HPT scripts: 80); off by default")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, default=8)
    g.add_argument("--global-batch-size", type=int, default=None,
                   help="sequences per optimizer step (all micro-batches, all DP ranks)")
    g.add_argument("--max-tokens-per-micro-batch", type=int, default=None,
                   help="token budget of one micro-batch on one GPU (slime --max-tokens-per-gpu, "
                        "verl ppo_max_token_len_per_gpu): rows are grouped by length (first-fit "
                        "decreasing) instead of --micro-batch-size rows each, each micro-batch "
                        "padded to its own longest row; at least --seq-length")
    g.add_argument("--sequence-packing", action="store_true",
                   help="with --max-tokens-per-micro-batch: concatenate a micro-batch's rows into "
                        "one THD stream (PackedSeqParams, no padding); needs Transformer Engine")
    g.add_argument("--train-iters", type=int, default=100)
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--max-skipped-iterations", type=int, default=10,
                   help="stop the run after this many iterations in a row were skipped for a "
                        "non-finite loss or gradient norm")
    g.add_argument("--data-path", default="builtin:arithmetic",
                   help="builtin:arithmetic (no files needed) or a verl/LUFFY .parquet, a .jsonl or "
                        "a .json array with prompt / target / reward_model.ground_truth (or "
                        "prompt / solution / answer)")
    g.add_argument("--data-skip-bad-rows", action="store_true",
                   help="skip (and count) unusable rows instead of stopping at the first one")
    g.add_argument("--eval-data-path", default=None,
                   help="held-out prompts for --eval-interval (default: held-out builtin problems)")
    g.add_argument("--reward-type", default=None, choices=tuple(REWARDS),
                   help="default: arithmetic for builtin:arithmetic, math (math-verify) for files")
    g.add_argument("--reward-fn", default=None, metavar="MODULE:FUNCTION",
                   help="your own grader (response, answer) -> float instead of --reward-type, "
                        "bounded by --reward-timeout per answer")
    g.add_argument("--reward-timeout", type=int, default=5,
                   help="seconds math-verify may spend parsing / comparing one answer")
    g.add_argument("--reward-workers", type=int, default=0,
                   help="grader processes on the first rank of each DP replica (0: grade in the trainer "
                        "process); a grader past 3 x --reward-timeout + 2 s, or one that crashes, "
                        "scores 0 (counted as `reward timeouts` / `reward failures`) and is replaced")
    g.add_argument("--use-cpu-initialization", action="store_true",
                   help="initialise full weights on CPU then split (same weights at any TP)")


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("checkpointing (megatron-core dist_checkpointing)")
    g.add_argument("--save", default=None, help="directory to save checkpoints to")
    g.add_argument("--load", default=None, help="directory to load a checkpoint from")
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--no-load-optim", action="store_true")
    g.add_argument("--no-load-rng", action="store_true")
    g.add_argument("--finetune", action="store_true",
                   help="load weights only and start at iteration 0")
    g.add_argument("--keep-last", type=int, default=None, help="keep the newest N iter_* dirs")
    g.add_argument("--exit-signal-handler", action="store_true",
                   help="on --exit-signal, save a checkpoint at the next step boundary and exit")
    g.add_argument("--exit-signal", choices=["SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT"],
                   default="SIGTERM", help="the signal --exit-signal-handler waits for")


def add_logging_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("logging")
    g.add_argument("--log-interval", type=int, default=1)
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--eval-interval", type=int, default=None,
                   help="greedy accuracy on held-out builtin problems every N iterations")


def _add_loss_arguments(p: argparse.ArgumentParser) -> None:
    from megatron_hpt.loss.cli import add_loss_arguments
    add_loss_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megatron_hpt.train",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for add in (add_model_arguments, add_parallel_arguments, add_precision_arguments,
                add_optimizer_arguments, add_training_arguments, add_checkpoint_arguments,
                add_logging_arguments, add_rollout_arguments, add_rl_arguments,
                add_colocation_arguments, _add_loss_arguments):
        add(p)
    return p


# ============================ configs ============================

@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    """Tensor-parallel ranks (splits heads, MLP width and vocabulary)."""
    pipeline_model_parallel_size: int = 1
    """Pipeline stages (splits layers)."""
    context_parallel_size: int = 1
    """Context-parallel ranks (splits the sequence in attention; needs Transformer Engine)."""
    sequence_parallel: bool = False
    """Shard layer-norm/dropout activations along the sequence over TP (needs Transformer Engine)."""
    use_distributed_optimizer: bool = False
    """Shard optimizer state over data-parallel ranks (needs CUDA)."""
    overlap_grad_reduce: bool = False
    """Overlap the DP gradient reduce with the backward pass."""
    data_parallel_size: int = 1
    """Derived: world size / (TP x PP x CP)."""
    virtual_pipeline_model_parallel_size: Optional[int] = None
    """Model chunks per pipeline stage (interleaved 1F1B); None = one."""
    overlap_param_gather: bool = False
    """Overlap the distributed optimizer's param all-gather with the next forward."""
    recompute_granularity: Optional[str] = None
    """None | full | selective (megatron-core TransformerConfig)."""
    recompute_method: Optional[str] = None
    """uniform | block (with full)."""
    recompute_num_layers: Optional[int] = None
    """Layers per recompute block (uniform) or recomputed layers per stage (block)."""
    distributed_timeout_minutes: int = 10
    """Collective timeout of the default process group."""


@dataclass
class TrainingConfig:
    shape: ModelShape
    """Model shape (from flags or the HF config)."""
    parallel: ParallelConfig
    """Parallel layout."""
    params_dtype: torch.dtype = torch.float32
    """Parameter dtype (bf16/fp16 with --bf16/--fp16)."""
    transformer_impl: str = "local"
    """megatron-core layer spec: local or transformer_engine (resolved by models/provider.py)."""
    fp8_format: Optional[str] = None
    """FP8 format for Transformer Engine, or None."""
    fp8_recipe: str = "delayed"
    """Transformer Engine FP8 recipe."""
    seq_length: int = 64
    """Tokens per training sequence."""
    micro_batch_size: int = 8
    """Sequences per micro-batch on one DP rank."""
    max_tokens_per_micro_batch: Optional[int] = None
    """Token budget of one micro-batch (training/packing.py); None: micro_batch_size rows each."""
    sequence_packing: bool = False
    """Pack each budgeted micro-batch's rows into one THD stream (Transformer Engine)."""
    global_batch_size: int = 8
    """Sequences per optimizer step over all DP ranks."""
    train_iters: int = 100
    """Optimizer steps to run."""
    seed: int = 1234
    """Seed for weights, data order and sampling."""
    max_skipped_iterations: int = 10
    """Stop after this many consecutive iterations skipped for a non-finite loss or grad norm."""
    use_cpu_initialization: bool = False
    """Initialise full weights on CPU then split (TP-invariant initial weights)."""
    data_path: str = "builtin:arithmetic"
    """Training data source: builtin:arithmetic or a .parquet / .jsonl / .json file."""
    data_skip_bad_rows: bool = False
    """Skip and count unusable data rows instead of raising on the first."""
    eval_data_path: Optional[str] = None
    """Held-out prompts for evaluation (None: held-out builtin problems)."""
    reward_type: Optional[str] = None
    """A name of ``rewards.REWARDS`` (arithmetic | math), or ``module:function`` from
    --reward-fn (None: by data source)."""
    reward_timeout: int = 5
    """Seconds math-verify may spend per answer."""
    reward_workers: int = 0
    """Grader processes (rewards/pool.py); 0 grades in the trainer process."""
    hf_model: Optional[str] = None
    """HF model directory the shape (and tokenizer) came from."""
    lr: float = 1e-4
    """Peak learning rate."""
    min_lr: float = 0.0
    """Final learning rate of a decaying schedule."""
    lr_decay_style: str = "constant"
    """constant | linear | cosine | inverse-square-root."""
    lr_warmup_iters: int = 0
    """Linear warm-up steps."""
    lr_decay_iters: Optional[int] = None
    """Decay steps (default: train_iters)."""
    optimizer: str = "adam"
    """adam (AdamW-style decoupled weight decay) or sgd."""
    weight_decay: float = 0.01
    """Decoupled weight decay."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Gradient-norm clip (0 = off)."""
    skip_grad_norm_above: Optional[float] = None
    """Skip the update when the gradient norm (before clipping) exceeds this (None = off)."""
    save: Optional[str] = None
    """Checkpoint directory to write."""
    load: Optional[str] = None
    """Checkpoint directory to read."""
    save_interval: Optional[int] = None
    """Save every N iterations (and at the end)."""
    no_load_optim: bool = False
    """Do not restore optimizer state."""
    no_load_rng: bool = False
    """Do not restore RNG state."""
    finetune: bool = False
    """Load weights only, restart at iteration 0."""
    keep_last: Optional[int] = None
    """Keep only the newest N iter_* checkpoints after each successful save."""
    exit_signal: Optional[str] = None
    """Signal name that makes the trainer save at the next step boundary and exit (None: off)."""
    log_interval: int = 1
    """Print an iteration line every N steps."""
    tensorboard_dir: Optional[str] = None
    """TensorBoard event directory."""
    eval_interval: Optional[int] = None
    """Evaluate every N iterations."""
    loss: object = None
    """The loss head's LossConfig (megatron_hpt.loss)."""
    loss_preset: str = "sft"
    """Name of the preset the loss config started from (sft trains on demonstrations only;
    every other preset runs the RL task with rollouts)."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Rollout engine and sampling (used by every preset but sft)."""
    rl: RlConfig = field(default_factory=RlConfig)
    """The RL task's HPT gate and DAPO rounds (training/rl/config.py)."""
    colocation: ColocationConfig = field(default_factory=ColocationConfig)
    """What leaves the GPU around rollout phases (training/colocation.py)."""


# ============================ validation ============================

def validate(cfg: TrainingConfig, world_size: int) -> None:
    """Raise ConfigError for every impossible combination, before anything is allocated."""
    par = cfg.parallel
    tp, pp, cp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size, par.context_parallel_size
    dp = world_size // max(1, tp * pp * cp)
    errors = layout_errors(cfg, world_size) + run_flag_errors(cfg)
    if cfg.loss is not None and cfg.loss_preset != "sft":
        errors += rl_config_errors(cfg, pp, dp)
    errors += performance_flag_errors(cfg, pp, cfg.global_batch_size // (cfg.micro_batch_size * max(dp, 1)))
    errors += colocation_errors(cfg)
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))


# ============================ namespace -> configs ============================

def _shape_from_flags(args, vocab_size: Optional[int], tp: int) -> ModelShape:
    missing = [f"--{n.replace('_', '-')}" for n in ("num_layers", "hidden_size", "num_attention_heads")
               if getattr(args, n) is None]
    if missing:
        raise ConfigError(f"model shape incomplete: give {', '.join(missing)} or --hf-model DIR")
    vocab = args.vocab_size or vocab_size
    if vocab is None:
        raise ConfigError("--vocab-size is required when the data source brings no tokenizer")
    if args.vocab_size is None:
        # Megatron-LM pads to a multiple of divisible-by x TP, so the vocabulary (and the softmax
        # over its padding rows) changes with TP. Here it is padded to divisible-by only, the same
        # at every layout; validate() then requires TP to divide it.
        mult = args.make_vocab_size_divisible_by
        vocab = ((vocab + mult - 1) // mult) * mult
    return ModelShape(
        num_layers=args.num_layers, hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size or 4 * args.hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups or args.num_attention_heads,
        kv_channels=args.kv_channels, vocab_size=vocab,
        max_position_embeddings=args.max_position_embeddings or args.seq_length or 4096,
        position_embedding_type=args.position_embedding_type, rotary_base=args.rotary_base,
        rope_scaling_factor=args.rope_scaling_factor, normalization=args.normalization,
        norm_epsilon=args.norm_epsilon, swiglu=args.swiglu,
        untie_embeddings_and_output_weights=args.untie_embeddings_and_output_weights,
        add_bias_linear=not args.disable_bias_linear, add_qkv_bias=args.add_qkv_bias,
        qk_layernorm=args.qk_layernorm,
    )


def _vpp_size(args, shape: ModelShape, pp: int) -> Optional[int]:  # chunks per stage
    try:
        return virtual_pipeline_size(args.num_layers_per_virtual_pipeline_stage, shape, pp)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def build_config(args: argparse.Namespace, world_size: int = 1,
                 tokenizer_vocab_size: Optional[int] = None) -> TrainingConfig:
    """Turn parsed flags into a validated TrainingConfig (raises ConfigError)."""
    from megatron_hpt.models.provider import resolve_transformer_impl  # megatron's model modules
    tp, pp, cp = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                  args.context_parallel_size)
    for name, v in (("tensor", tp), ("pipeline", pp), ("context", cp)):
        if v < 1:
            raise ConfigError(f"--{name}-model-parallel-size must be >= 1, got {v}")
    if args.hf_model:
        shape = shape_from_hf_config(load_hf_config(args.hf_model),
                                     source=f"{args.hf_model}/config.json")
    else:
        shape = _shape_from_flags(args, tokenizer_vocab_size, tp)
    if args.bf16 and args.fp16:
        raise ConfigError("--bf16 and --fp16 are exclusive; pick one")
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    dp = max(1, world_size // (tp * pp * cp))
    from megatron_hpt.loss.cli import loss_config_from_args
    try:
        loss_cfg = loss_config_from_args(args)
        if args.rollout_max_response_len and args.loss_max_response_length is None:
            # L_max of the Σ/L_max aggregations is the run's max response length (verl's
            # data.max_response_length); the presets' 8192 is the papers' value
            loss_cfg = loss_cfg.replace(max_response_length=args.rollout_max_response_len)
    except (ValueError, KeyError) as e:
        raise ConfigError(str(e)) from e
    cfg = TrainingConfig(
        shape=shape,
        parallel=ParallelConfig(
            tp, pp, cp, args.sequence_parallel, args.use_distributed_optimizer,
            args.overlap_grad_reduce, dp, _vpp_size(args, shape, pp),
            args.overlap_param_gather, args.recompute_granularity, args.recompute_method,
            args.recompute_num_layers, args.distributed_timeout_minutes),
        params_dtype=dtype, fp8_format=args.fp8_format, fp8_recipe=args.fp8_recipe,
        transformer_impl=resolve_transformer_impl(args.transformer_impl),
        seq_length=args.seq_length or min(shape.max_position_embeddings, 64),
        micro_batch_size=args.micro_batch_size,
        global_batch_size=args.global_batch_size or args.micro_batch_size * dp,
        train_iters=args.train_iters, seed=args.seed, max_skipped_iterations=args.max_skipped_iterations,
        use_cpu_initialization=args.use_cpu_initialization or not cuda_available(),
        data_path=args.data_path, hf_model=args.hf_model,
        data_skip_bad_rows=args.data_skip_bad_rows, eval_data_path=args.eval_data_path,
        reward_type=args.reward_type, reward_timeout=args.reward_timeout,
        reward_workers=args.reward_workers,
        max_tokens_per_micro_batch=args.max_tokens_per_micro_batch,
        sequence_packing=args.sequence_packing,
        lr=args.lr, min_lr=args.min_lr, lr_decay_style=args.lr_decay_style,
        lr_warmup_iters=args.lr_warmup_iters, lr_decay_iters=args.lr_decay_iters,
        optimizer=args.optimizer, weight_decay=args.weight_decay, adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2, adam_eps=args.adam_eps, clip_grad=args.clip_grad,
        skip_grad_norm_above=args.skip_grad_norm_above,
        save=args.save, load=args.load, save_interval=args.save_interval,
        no_load_optim=args.no_load_optim, no_load_rng=args.no_load_rng, finetune=args.finetune,
        keep_last=args.keep_last,
        exit_signal=args.exit_signal if args.exit_signal_handler else None,
        log_interval=args.log_interval, tensorboard_dir=args.tensorboard_dir,
        eval_interval=args.eval_interval, loss=loss_cfg, loss_preset=args.loss_preset,
        rollout=rollout_config_from_args(args), rl=rl_config_from_args(args),
        colocation=colocation_config_from_args(args),
    )
    cfg.reward_type = _reward_type(args)
    if args.loss_preset != "sft" and args.global_batch_size is None:
        # the RL task's rows: n rollouts (+ one demonstration) per prompt
        cfg.global_batch_size = rows_per_rollout(cfg)
    validate(cfg, world_size)
    return cfg


def model_parallel_kwargs(cfg: TrainingConfig) -> dict:
    """The ``ModelParallelConfig`` / FP8 fields of ``TransformerConfig`` for this run."""
    par = cfg.parallel
    kw = dict(
        tensor_model_parallel_size=par.tensor_model_parallel_size,
        pipeline_model_parallel_size=par.pipeline_model_parallel_size,
        context_parallel_size=par.context_parallel_size,
        sequence_parallel=par.sequence_parallel,
        params_dtype=cfg.params_dtype,
        pipeline_dtype=cfg.params_dtype,
        bf16=cfg.params_dtype == torch.bfloat16,
        fp16=cfg.params_dtype == torch.float16,
        use_cpu_initialization=cfg.use_cpu_initialization,
        virtual_pipeline_model_parallel_size=par.virtual_pipeline_model_parallel_size,
        recompute_granularity=par.recompute_granularity,
        recompute_method=par.recompute_method,
        recompute_num_layers=par.recompute_num_layers,
    )
    if cfg.fp8_format is not None:  # megatron-core's documented switches; TE does the work
        kw.update(fp8=cfg.fp8_format, fp8_recipe=cfg.fp8_recipe)
    return kw


def _reward_type(args: argparse.Namespace) -> Optional[str]:
    """--reward-type, or --reward-fn's module:function (imported now, so a typo stops the run
    before anything is allocated)."""
    if getattr(args, "reward_fn", None) is None:
        return args.reward_type
    if args.reward_type is not None:
        raise ConfigError("give --reward-type or --reward-fn, not both")
    from megatron_hpt.rewards.user import resolve
    try:
        resolve(args.reward_fn)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return args.reward_fn
