"""Shared pieces of the trainer tests: a tiny model's flags and per-rank entry points."""
from __future__ import annotations

TINY_MODEL = [
    "--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "128",
    "--num-attention-heads", "4", "--num-query-groups", "2", "--seq-length", "32",
    "--max-position-embeddings", "64", "--normalization", "RMSNorm", "--swiglu",
    "--position-embedding-type", "rope", "--disable-bias-linear",
    "--untie-embeddings-and-output-weights",
]
TRAIN = ["--micro-batch-size", "2", "--global-batch-size", "8", "--lr", "1e-3",
         "--clip-grad", "1.0", "--seed", "7", "--log-interval", "1"]


def layout(tp: int = 1, pp: int = 1) -> list:
    return ["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp)]


def save_initial_weights(root: str) -> None:
    """Rank entry point: build the TP1 model from TINY_MODEL and save it as iteration 0."""
    from megatron_hpt.arguments import build_config, build_parser
    from megatron_hpt.data.tokenizer import build_char_tokenizer
    from megatron_hpt.training import distributed
    from megatron_hpt.training.checkpoint import save_checkpoint
    from megatron_hpt.training.setup import build_model

    args = build_parser().parse_args(TINY_MODEL + TRAIN)
    cfg = build_config(args, 1, tokenizer_vocab_size=len(build_char_tokenizer()))
    distributed.initialize(seed=cfg.seed)
    save_checkpoint(root, 0, build_model(cfg), shape=cfg.shape)
    distributed.destroy()


def train(argv: list) -> list:
    """Rank entry point: run the trainer; returns per-iteration metrics from the logging rank
    (the last pipeline stage) and [] from the others."""
    from megatron_hpt.training import distributed
    from megatron_hpt.training.logging import is_logging_rank
    from megatron_hpt.train import run

    try:
        out = run(argv)
        return out["metrics"] if is_logging_rank() else []
    finally:
        distributed.destroy()


def full_weights(ckpt_root: str) -> dict:
    """Rank entry point (one process): load a checkpoint at TP1/PP1 and return its full weights."""
    return many_full_weights([ckpt_root])[0]


#: split-invariant readings of the faithful per-micro-batch presets (SPEC §6; luffy()'s docstring):
#: ``<preset>@global`` divides by step-wide counts instead of each micro-batch's own
GLOBAL_READING = {"luffy": dict(loss_agg_mode="seq-mean-token-sum-norm", entropy_agg_mode="token-mean")}


def loss_config(name: str):
    """``preset(name)``, or for ``<preset>@global`` the preset with GLOBAL_READING's changes."""
    from megatron_hpt.loss import preset
    base, _, reading = name.partition("@")
    cfg = preset(base)
    return cfg.replace(**GLOBAL_READING[base]) if reading == "global" else cfg


def synthetic_rl_batch(preset_name: str, seq_length: int = 32, vocab: int = 80, seed: int = 3) -> dict:
    """A global batch of 8 rows (2 prompts x 4) with ragged response masks, detached old
    log-probs off the current policy (so ratios != 1 and clipping is active), 0/1 rewards,
    and demonstrations mixed in the way each hybrid preset expects."""
    import torch
    from megatron_hpt.loss import compute_advantages

    g = torch.Generator().manual_seed(seed)
    n = 8
    tokens = torch.randint(4, vocab, (n, seq_length), generator=g)
    labels = torch.randint(4, vocab, (n, seq_length), generator=g)
    starts = torch.randint(3, 10, (n,), generator=g)
    ends = torch.clamp(starts + torch.randint(4, seq_length - 10, (n,), generator=g), max=seq_length)
    pos = torch.arange(seq_length)
    mask = ((pos >= starts[:, None]) & (pos < ends[:, None])).float()
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    rewards = torch.tensor([1., 0., 1., 0., 0., 0., 1., 1.])
    is_demo = torch.zeros(n, dtype=torch.bool)
    from megatron_hpt.loss.batch import Batch
    batch = Batch(tokens=tokens, labels=labels, response_mask=mask,
                  position_ids=pos.expand(n, seq_length).contiguous(),
                  old_logprobs=-3.0 - torch.rand(n, seq_length, generator=g))
    cfg = loss_config(preset_name)
    preset_name = preset_name.partition("@")[0]
    if preset_name == "egspo":  # π_old's entropies: the batch-quantile gate reads them
        batch.old_entropy = 0.5 + 2.0 * torch.rand(n, seq_length, generator=g)
    if preset_name == "luffy":  # one demonstration per group, inside the group statistics
        is_demo[[3, 7]] = True
        rewards[[3, 7]] = 1.0
    if preset_name.startswith("hpt"):  # group 1 takes the SFT branch: its rollouts are dropped
        is_demo[7] = True
        batch.on_policy_weight = torch.tensor([1., 1., 1., 1., 0., 0., 0., 0.])
        batch.sft_weight = torch.tensor([0., 0., 0., 0., 0., 0., 0., 1.])
        # the SFT-branch demo sits alone in its own micro-batch of a 4-way split, so the
        # released per-micro-batch token-mean weighs it differently from the global one
    batch.is_demo = is_demo
    batch.advantages = compute_advantages(rewards, group, cfg, is_demo=is_demo,
                                             response_mask=mask).float()
    return batch


def rl_steps(argv: list, runs: list, init_ckpt: str, save_root: str) -> list:
    """Rank entry point: for each ``(preset_name, micro_batch_size)`` in ``runs``, load the initial
    weights, take one optimizer step of that preset on the synthetic batch (SGD, lr 1000, no
    clipping or decay: the weight change is -1000 x the gradient) and save it under
    ``save_root/<preset>_mb<size>``. Returns the global losses (from the last rank)."""
    import os
    from megatron_hpt.arguments import build_config, build_parser
    from megatron_hpt.loss import mu_at_step
    from megatron_hpt.training import distributed
    from megatron_hpt.training.checkpoint import load_checkpoint, save_checkpoint
    from megatron_hpt.training.loss_head import LossHead
    from megatron_hpt.training.setup import build_model, build_optimizer
    from megatron_hpt.training.step import forward_logprobs, train_step
    import torch.distributed as dist

    args = build_parser().parse_args(argv)
    cfg = build_config(args, dist_world_size(), tokenizer_vocab_size=80)
    distributed.initialize(cfg.parallel.tensor_model_parallel_size,
                           cfg.parallel.pipeline_model_parallel_size, seed=cfg.seed)
    losses = []
    try:
        model = build_model(cfg)
        for preset_name, micro_batch_size in runs:
            optimizer, scheduler = build_optimizer(cfg, model)
            load_checkpoint(init_ckpt, model, finetune=True)
            head = LossHead(loss_config(preset_name))
            micro_batches = layout_micro_batches(synthetic_rl_batch(preset_name), micro_batch_size)
            if head.cfg.mu_schedule != "none":  # the SFT mixing weight μ of step 0 (EGSPO)
                for mb in micro_batches:
                    mb.mu = mu_at_step(0, head.cfg)
            if str(micro_batch_size).endswith(("_recompute", "_forward")):
                # π_old = the current policy: a recompute pass, or the training forward itself
                if micro_batch_size.endswith("_recompute"):
                    fresh = forward_logprobs(model, micro_batches, cfg.seq_length)
                    for mb, (logprobs, entropy) in zip(micro_batches, fresh):
                        mb.old_logprobs, mb.old_entropy = logprobs * mb.response_mask, entropy
                else:
                    head.old_from_forward = True
            head.attach_normalizers(micro_batches)
            metrics = train_step(model, optimizer, scheduler, micro_batches, head, cfg.seq_length)
            save_checkpoint(os.path.join(save_root, f"{preset_name}_mb{micro_batch_size}"), 1, model)
            losses.append(metrics.get("lm loss"))
        return losses if dist.get_rank() == dist.get_world_size() - 1 else None
    finally:
        distributed.destroy()


def layout_micro_batches(batch, spec) -> list:
    """This DP rank's micro-batches of ``batch``: ``spec`` an int (rows per micro-batch) or
    ``"t<N>..."`` (token budget of N tokens, training/packing.py)."""
    from megatron_hpt.training import packing
    from megatron_hpt.training.batches import split_for_rank

    if isinstance(spec, int):
        return split_for_rank(batch, spec)
    budget = int(str(spec)[1:].split("_")[0])
    rows = split_for_rank(batch, 1 << 62)[0]
    return packing.build(rows, packing.plan(rows, 1, budget), True)


def many_full_weights(ckpt_roots: list) -> list:
    """Rank entry point (one process): ``full_weights`` of each checkpoint, in one start-up."""
    from megatron_hpt.arguments import build_config, build_parser
    from megatron_hpt.data.tokenizer import build_char_tokenizer
    from megatron_hpt.training import distributed
    from megatron_hpt.training.checkpoint import load_checkpoint
    from megatron_hpt.training.setup import build_model

    args = build_parser().parse_args(TINY_MODEL + TRAIN)
    cfg = build_config(args, 1, tokenizer_vocab_size=len(build_char_tokenizer()))
    distributed.initialize(seed=cfg.seed)
    try:
        model = build_model(cfg)
        out = []
        for root in ckpt_roots:
            load_checkpoint(root, model, finetune=True)
            out.append({k: v.detach().clone() for k, v in model[0].module.state_dict().items()
                        if not k.endswith("_extra_state")})
        return out
    finally:
        distributed.destroy()


def dist_world_size() -> int:
    import os
    return int(os.environ.get("WORLD_SIZE", "1"))
