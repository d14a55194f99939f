"""Build the model chunks (DDP-wrapped), the megatron optimizer and the LR schedule of a run."""
from __future__ import annotations

from typing import List, Tuple

from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed import finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_hpt.arguments import TrainingConfig, model_parallel_kwargs
from megatron_hpt.models.stage import build_model_stage
from megatron_hpt.models.unwrap import unwrap_model


def finalize_grads_without_token_scaling(model, num_tokens=None, **kwargs):
    """megatron's ``finalize_model_grads`` (DP all-reduce, tied/pipeline embedding grads) with the
    per-token division switched off: with ``calculate_per_token_loss=True`` megatron would divide
    every gradient by the summed ``num_tokens`` of the loss functions. Our loss head already divides
    by global normalizers computed once per step (SPEC §6), so that divide is cancelled here."""
    return finalize_model_grads(model, None, **kwargs)


def build_model(cfg: TrainingConfig) -> List[DistributedDataParallel]:
    """This rank's pipeline stage of the model, wrapped in megatron-core DDP: one chunk, or one
    per virtual stage with --num-layers-per-virtual-pipeline-stage (interleaved 1F1B)."""
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=cfg.parallel.overlap_grad_reduce,
        overlap_param_gather=cfg.parallel.overlap_param_gather,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
    )
    vpp = cfg.parallel.virtual_pipeline_model_parallel_size
    chunks, tconfig = [], None
    for i in range(vpp or 1):
        model, tconfig = build_model_stage(
            cfg.shape, dict(transformer_impl=cfg.transformer_impl), vp_stage=i if vpp else None,
            config=tconfig, **model_parallel_kwargs(cfg))
        # Megatron-LM: chunks after the first get one bucket (their grads are ready last)
        ddp = DistributedDataParallel(config=tconfig, ddp_config=ddp_config, module=model,
                                      disable_bucketing=i > 0)
        ddp.broadcast_params()  # identical replicas across DP from the first step
        chunks.append(ddp)
    tconfig.finalize_model_grads_func = finalize_grads_without_token_scaling
    one = len(chunks) == 1
    tconfig.no_sync_func = chunks[0].no_sync if one else [c.no_sync for c in chunks]
    if cfg.parallel.overlap_grad_reduce:
        tconfig.grad_sync_func = chunks[0].start_grad_sync if one else [c.start_grad_sync for c in chunks]
    return chunks


def build_reference_model(cfg: TrainingConfig, policy: List[DistributedDataParallel]) -> list:
    """A frozen copy of the policy as it is now (after --load): the reference of the KL terms.
    Same layout as the policy (this rank's TP shard of this PP stage); no DDP, no gradients.
    Memory: one more copy of the weights per rank (no optimizer state), in host memory between
    uses with --offload-reference (a ``colocation.HostReference``; ``reference_on_device``)."""
    from megatron_hpt.training.colocation import host_reference
    ref, _ = build_model_stage(cfg.shape, dict(transformer_impl=cfg.transformer_impl),
                               **model_parallel_kwargs(cfg))
    ref.load_state_dict(unwrap_model(policy[0]).state_dict(), strict=True)
    ref.requires_grad_(False)
    return host_reference(cfg, [ref.eval()])


def build_optimizer(cfg: TrainingConfig, model: List[DistributedDataParallel]
                    ) -> Tuple[object, OptimizerParamScheduler]:
    """megatron's optimizer (Adam/SGD, grad clipping, distributed optimizer on GPU) + LR schedule."""
    import torch
    opt_config = OptimizerConfig(
        optimizer=cfg.optimizer, lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_eps=cfg.adam_eps,
        clip_grad=cfg.clip_grad, bf16=cfg.params_dtype == torch.bfloat16,
        fp16=cfg.params_dtype == torch.float16, params_dtype=cfg.params_dtype,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(opt_config, model)
    decay_iters = cfg.lr_decay_iters or cfg.train_iters
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0 if cfg.lr_warmup_iters else cfg.lr, max_lr=cfg.lr, min_lr=cfg.min_lr,
        lr_warmup_steps=cfg.lr_warmup_iters, lr_decay_steps=max(decay_iters, cfg.lr_warmup_iters + 1),
        lr_decay_style=cfg.lr_decay_style, start_wd=cfg.weight_decay, end_wd=cfg.weight_decay,
        wd_incr_steps=decay_iters, wd_incr_style="constant",
    )
    return optimizer, scheduler
