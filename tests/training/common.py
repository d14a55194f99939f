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
        load_checkpoint(ckpt_root, model, finetune=True)
        return {k: v.detach().clone() for k, v in model[0].module.state_dict().items()
                if not k.endswith("_extra_state")}
    finally:
        distributed.destroy()
