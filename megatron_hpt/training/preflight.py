"""Every check that can be made before training starts, made before any process group, model or
rollout exists (``prepare`` is the first thing ``train.run`` does).

    flags      numeric ranges (``--lr > 0``, ``--train-iters >= 1``, ...), before anything uses them
    data       files readable and non-empty, fields present (records.py), every prompt (and
               demonstration) representable by the tokenizer and short enough for
               ``--seq-length``; with ``--data-skip-bad-rows`` such rows are skipped and counted
    --save     a directory (not a file) this process can write, with room for one checkpoint
    --load     a checkpoint directory with a tracker whose model shape equals this run's, field by
               field (``--finetune`` does not waive it: the tensors would be wrong)

A failure is a ``ConfigError`` whose message is one line naming the file/row/field/flag and what
to do; ``train.main`` prints it on stderr and exits with code 2. Nothing is written: the
writability probe of ``--save`` removes what it creates.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from typing import List, Optional

from megatron_hpt.arguments import ConfigError, TrainingConfig
from megatron_hpt.data.tokenizer import describe_chars, unrepresentable_chars
from megatron_hpt.data.prompts import BUILTIN, PromptSource
from megatron_hpt.models.shape import ModelShape

TRACKER = "latest_checkpointed_iteration.txt"


# ============================ numeric flags ============================

def _flag_rules(args):
    """(flag, value, ok, requirement) for every numeric flag the run reads."""
    def ge(v, lo):
        return v is None or (v == v and v >= lo)

    g = lambda name: getattr(args, name, None)  # noqa: E731
    return [
        ("--lr", g("lr"), g("lr") is not None and g("lr") > 0 and math.isfinite(g("lr")),
         "> 0 (a learning rate of 0 or below trains nothing)"),
        ("--min-lr", g("min_lr"), ge(g("min_lr"), 0) and (g("lr") is None or g("min_lr") <= g("lr")),
         ">= 0 and <= --lr"),
        ("--train-iters", g("train_iters"), ge(g("train_iters"), 1), ">= 1"),
        ("--micro-batch-size", g("micro_batch_size"), ge(g("micro_batch_size"), 1), ">= 1"),
        ("--global-batch-size", g("global_batch_size"), ge(g("global_batch_size"), 1), ">= 1"),
        ("--seq-length", g("seq_length"), ge(g("seq_length"), 1), ">= 1"),
        ("--max-position-embeddings", g("max_position_embeddings"),
         ge(g("max_position_embeddings"), 1), ">= 1"),
        ("--num-layers", g("num_layers"), ge(g("num_layers"), 1), ">= 1"),
        ("--hidden-size", g("hidden_size"), ge(g("hidden_size"), 1), ">= 1"),
        ("--ffn-hidden-size", g("ffn_hidden_size"), ge(g("ffn_hidden_size"), 1), ">= 1"),
        ("--num-attention-heads", g("num_attention_heads"), ge(g("num_attention_heads"), 1), ">= 1"),
        ("--num-query-groups", g("num_query_groups"), ge(g("num_query_groups"), 1), ">= 1"),
        ("--kv-channels", g("kv_channels"), ge(g("kv_channels"), 1), ">= 1"),
        ("--vocab-size", g("vocab_size"), ge(g("vocab_size"), 1), ">= 1"),
        ("--make-vocab-size-divisible-by", g("make_vocab_size_divisible_by"),
         ge(g("make_vocab_size_divisible_by"), 1), ">= 1"),
        ("--norm-epsilon", g("norm_epsilon"), ge(g("norm_epsilon"), 0) and g("norm_epsilon") > 0, "> 0"),
        ("--rotary-base", g("rotary_base"), ge(g("rotary_base"), 0) and g("rotary_base") > 0, "> 0"),
        ("--rope-scaling-factor", g("rope_scaling_factor"),
         g("rope_scaling_factor") is None or g("rope_scaling_factor") > 0, "> 0"),
        ("--seed", g("seed"), ge(g("seed"), 0), ">= 0"),
        ("--lr-warmup-iters", g("lr_warmup_iters"), ge(g("lr_warmup_iters"), 0), ">= 0"),
        ("--lr-decay-iters", g("lr_decay_iters"), ge(g("lr_decay_iters"), 1), ">= 1"),
        ("--weight-decay", g("weight_decay"), ge(g("weight_decay"), 0), ">= 0"),
        ("--adam-beta1", g("adam_beta1"), ge(g("adam_beta1"), 0) and g("adam_beta1") < 1, "in [0, 1)"),
        ("--adam-beta2", g("adam_beta2"), ge(g("adam_beta2"), 0) and g("adam_beta2") < 1, "in [0, 1)"),
        ("--adam-eps", g("adam_eps"), ge(g("adam_eps"), 0) and g("adam_eps") > 0, "> 0"),
        ("--clip-grad", g("clip_grad"), ge(g("clip_grad"), 0), ">= 0 (0 = no clipping)"),
        ("--save-interval", g("save_interval"), ge(g("save_interval"), 1), ">= 1"),
        ("--log-interval", g("log_interval"), ge(g("log_interval"), 1), ">= 1"),
        ("--eval-interval", g("eval_interval"), ge(g("eval_interval"), 1), ">= 1"),
        ("--reward-timeout", g("reward_timeout"), ge(g("reward_timeout"), 1), ">= 1 second"),
        ("--rollout-batch-size", g("rollout_batch_size"), ge(g("rollout_batch_size"), 1), ">= 1"),
        ("--n-samples-per-prompt", g("n_samples_per_prompt"), ge(g("n_samples_per_prompt"), 1), ">= 1"),
        ("--rollout-temperature", g("rollout_temperature"), ge(g("rollout_temperature"), 0), ">= 0"),
        ("--rollout-top-p", g("rollout_top_p"),
         g("rollout_top_p") is None or 0 < g("rollout_top_p") <= 1, "in (0, 1]"),
        ("--rollout-top-k", g("rollout_top_k"), ge(g("rollout_top_k"), 0), ">= 0 (0 = off)"),
        ("--rollout-max-response-len", g("rollout_max_response_len"),
         ge(g("rollout_max_response_len"), 1), ">= 1"),
    ]


def check_flags(args) -> None:
    """Numeric flags in range, checked on the parsed namespace before any config is derived."""
    bad = [f"{flag} {value} is out of range: it must be {need}"
           for flag, value, ok, need in _flag_rules(args) if not ok]
    if bad:
        raise ConfigError("; ".join(bad))


# ============================ data ============================

def _worst_builtin_lengths(tokenizer):
    """(prompt tokens, prompt + solution + EOS tokens) of the longest built-in problem (99+99:
    a carry in every column and a three-digit sum)."""
    from megatron_hpt.data.arithmetic import worked_solution
    prompt = [tokenizer.bos_token_id] + tokenizer.encode("99+99=", add_special_tokens=False)
    solution = tokenizer.encode(worked_solution(99, 99), add_special_tokens=False)
    return len(prompt), len(prompt) + len(solution) + 1


def _text(prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(t["content"] for t in prompt)


def _record_problem(rec, ids, demo_ids, tokenizer, seq_length: int) -> Optional[str]:
    """What makes a record unusable at this sequence length and tokenizer, or None. ``ids``: the
    rendered prompt; ``demo_ids``: the demonstration's tokens when the run trains on it."""
    unk = tokenizer.unk_token_id
    for name, text, tokens in (("prompt", _text(rec.prompt), ids),
                               ("target/solution", rec.demonstration, demo_ids)):
        if tokens is not None and unk is not None and unk in tokens:
            chars = unrepresentable_chars(tokenizer, text) or "?"
            return (f"field {name!r} has characters the tokenizer cannot represent: "
                    f"{describe_chars(chars)}; use --hf-model with a tokenizer that covers them, "
                    "remove the row, or pass --data-skip-bad-rows")
    if len(ids) > seq_length:
        return (f"field 'prompt' is {len(ids)} tokens, longer than --seq-length {seq_length} "
                "(no room for a response); raise --seq-length or pass --data-skip-bad-rows")
    if demo_ids is not None and len(ids) + len(demo_ids) + 1 > seq_length + 1:
        return (f"prompt + field 'target/solution' + EOS is {len(ids) + len(demo_ids) + 1} tokens, "
                f"more than --seq-length + 1 = {seq_length + 1}; raise --seq-length or pass "
                "--data-skip-bad-rows")
    return None


def _encode_all(tokenizer, texts: List[str]) -> List[List[int]]:
    """Token ids of many texts in one call (a fast tokenizer's Rust backend batches them)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return list(tokenizer(texts, add_special_tokens=False)["input_ids"])


def check_prompts(source, tokenizer, seq_length: int, path: str, skip_bad_rows: bool,
                  need_demonstrations: bool = False) -> int:
    """Tokenize every record of ``source`` once (the prompt ids are kept for the run) and check
    it against the tokenizer and ``seq_length``. Bad rows raise ``ConfigError`` naming the file,
    row and field, or are dropped and counted with ``skip_bad_rows``. Returns the rows dropped."""
    from megatron_hpt.data.records import render_prompt
    if source.builtin:
        prompt_len, full_len = _worst_builtin_lengths(tokenizer)
        need = full_len - 1 if need_demonstrations else prompt_len
        if need > seq_length:
            raise ConfigError(f"--seq-length {seq_length} is too short for {path}: its longest "
                              f"{'prompt + solution' if need_demonstrations else 'prompt'} needs "
                              f"--seq-length >= {need}")
        return 0
    records = source.records
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    plain = [i for i, r in enumerate(records) if isinstance(r.prompt, str)]
    for i, ids in zip(plain, _encode_all(tokenizer, [records[i].prompt for i in plain])):
        records[i].prompt_ids = bos + ids  # what render_prompt gives a text prompt
    for r in records:
        if r.prompt_ids is None:  # chat turns: the tokenizer's template
            r.prompt_ids = render_prompt(r.prompt, tokenizer)
    demos = [None] * len(records)
    if need_demonstrations:
        with_demo = [i for i, r in enumerate(records) if r.demonstration is not None]
        for i, ids in zip(with_demo, _encode_all(tokenizer, [records[i].demonstration
                                                             for i in with_demo])):
            demos[i] = ids
    kept, dropped = [], 0
    for rec, demo_ids in zip(records, demos):
        problem = _record_problem(rec, rec.prompt_ids, demo_ids, tokenizer, seq_length)
        if problem is None:
            kept.append(rec)
        elif skip_bad_rows:
            dropped += 1
        else:
            raise ConfigError(f"{path}: row {rec.row}: {problem}")
    if not kept:
        raise ConfigError(f"{path}: no usable rows ({source.skipped + dropped} skipped); "
                          "fix the data or raise --seq-length")
    source.records = kept
    source.skipped += dropped
    return dropped


# ============================ --save ============================

def num_parameters(s: ModelShape) -> int:
    """Parameters of the model of shape ``s`` (embedding, layers, final norm, output layer)."""
    h, kv = s.hidden_size, s.kv_channels
    norm = 2 * h if s.normalization == "LayerNorm" else h
    qkv_out = (s.num_attention_heads + 2 * s.num_query_groups) * kv
    fc1_out = s.ffn_hidden_size * (2 if s.swiglu else 1)
    layer = h * qkv_out + s.num_attention_heads * kv * h + h * fc1_out + s.ffn_hidden_size * h
    if s.add_bias_linear:
        layer += qkv_out + h + fc1_out + h
    elif s.add_qkv_bias:
        layer += qkv_out
    layer += 2 * norm + (2 * kv if s.qk_layernorm else 0)
    total = s.num_layers * layer + norm + s.vocab_size * h
    if s.untie_embeddings_and_output_weights:
        total += s.vocab_size * h
    if s.position_embedding_type == "learned_absolute":
        total += s.max_position_embeddings * h
    return total


def checkpoint_bytes(cfg: TrainingConfig) -> int:
    """About the size of one training checkpoint: weights, Adam's two moments (fp32) and, in
    mixed precision, the fp32 main weights; the KL reference copy when a KL term is on."""
    import torch
    params = num_parameters(cfg.shape)
    weight = torch.finfo(cfg.params_dtype).bits // 8
    per_param = weight + (8 if cfg.optimizer == "adam" else 0)
    if cfg.params_dtype != torch.float32:
        per_param += 4
    if cfg.loss is not None and getattr(cfg.loss, "kl_coef", 0) > 0 and cfg.loss_preset != "sft":
        per_param += weight
    return params * per_param


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_output_dir(path: str, flag: str, need_bytes: int = 0) -> None:
    """``path`` is (or can be created as) a directory this process can write, with ``need_bytes``
    free. Probes by creating and removing a temporary directory: nothing is left behind."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag} {path}: exists and is not a directory; give a directory path")
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        raise ConfigError(f"{flag} {path}: {base} is a file, so the directory cannot be created; "
                          "give another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".megatron_hpt_probe-", dir=base))
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write in {base} ({e.strerror or e}); choose a "
                          "writable directory") from None
    if need_bytes:
        free = shutil.disk_usage(base).free
        if free < need_bytes:
            raise ConfigError(f"{flag} {path}: {free / 1e9:.3f} GB free on its disk, one "
                              f"checkpoint needs about {need_bytes / 1e9:.3f} GB; free space or "
                              "choose another disk")


# ============================ --load ============================

#: shape fields that do not change a tensor or its meaning
_PROVENANCE = ("hf_model_type",)


def shape_differences(ckpt: ModelShape, run: ModelShape) -> List[str]:
    """``field: checkpoint X, this run Y`` for every field that changes tensors or their meaning
    (``max_position_embeddings`` only for learned positions: RoPE has no table)."""
    out = []
    for f in dataclasses.fields(ModelShape):
        if f.name in _PROVENANCE:
            continue
        a, b = getattr(ckpt, f.name), getattr(run, f.name)
        if f.name == "max_position_embeddings" and "learned_absolute" not in (
                ckpt.position_embedding_type, run.position_embedding_type):
            continue
        if a != b:
            out.append(f"{f.name}: checkpoint {a}, this run {b}")
    return out


def _stored_shape(root: str, ckpt_dir: str) -> Optional[tuple]:
    for d in (ckpt_dir, root):  # the checkpoint's own copy first (written inside the save)
        path = os.path.join(d, "model_shape.json")
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    return ModelShape.from_json(f.read(), source=path), path
            except (ValueError, TypeError) as e:
                raise ConfigError(f"--load {root}: {path} is not a model shape ({e}); restore it "
                                  "from the run that wrote the checkpoint") from None
    return None


def check_load(cfg: TrainingConfig) -> None:
    """``--load`` names a complete checkpoint whose model equals this run's."""
    root = cfg.load
    hint = "give the --save directory of a run or the output of tools/convert_hf_to_megatron.py"
    if not os.path.exists(root):
        raise ConfigError(f"--load {root}: no such directory; {hint}")
    if not os.path.isdir(root):
        raise ConfigError(f"--load {root}: is a file, not a checkpoint directory; {hint}")
    tracker = os.path.join(root, TRACKER)
    if not os.path.isfile(tracker):
        entries = [e for e in os.listdir(root) if not e.startswith(".")]
        what = "the directory is empty" if not entries else \
            "only unfinished saves (*.tmp) are there" if all(e.endswith(".tmp") for e in entries) \
            else f"it has no {TRACKER}"
        raise ConfigError(f"--load {root}: no complete checkpoint: {what}; {hint}")
    text = open(tracker).read().strip()
    if text != "release" and not text.isdigit():
        raise ConfigError(f"--load {root}: {TRACKER} holds {text!r}, not an iteration number or "
                          "'release'; fix or remove the file")
    name = "release" if text == "release" else f"iter_{int(text):07d}"
    ckpt_dir = os.path.join(root, name)
    if not os.path.isdir(ckpt_dir) and os.path.isdir(ckpt_dir + ".old"):
        raise ConfigError(f"--load {root}: {name} was being replaced by a new save of the same "
                          f"iteration when the run stopped; rename {name}.old to {name}")
    if not os.path.isdir(ckpt_dir) or not os.path.isfile(os.path.join(ckpt_dir, "metadata.json")):
        raise ConfigError(f"--load {root}: {TRACKER} names {name}, which is missing or incomplete; "
                          f"point the tracker at a complete iter_* directory")
    stored = _stored_shape(root, ckpt_dir)
    if stored is None:
        _check_tensor_shapes(root, ckpt_dir, cfg.shape)
        return
    shape, path = stored
    diff = shape_differences(shape, cfg.shape)
    if diff:
        raise ConfigError(f"--load {root}: the checkpoint's model ({path}) differs from this "
                          f"run's: {'; '.join(diff)}; give the model flags (or --hf-model) the "
                          "checkpoint was made with")


def _check_tensor_shapes(root: str, ckpt_dir: str, s: ModelShape) -> None:
    """No model_shape.json (a checkpoint from elsewhere): compare the tensors that fix vocabulary,
    width, depth and tying with the checkpoint's metadata."""
    from megatron_hpt.conversion.checkpoint import read_tensor_metadata
    try:
        meta = read_tensor_metadata(ckpt_dir)
    except Exception as e:  # noqa: BLE001 - any unreadable metadata is the same user error
        raise ConfigError(f"--load {root}: cannot read the checkpoint metadata of {ckpt_dir} "
                          f"({e}); the checkpoint is damaged") from None
    expect = {"embedding.word_embeddings.weight": (s.vocab_size, s.hidden_size),
              "decoder.layers.self_attention.linear_proj.weight":
                  (s.num_layers, s.hidden_size, s.num_attention_heads * s.kv_channels)}
    diff = [f"{k}: checkpoint {meta[k][0]}, this run {v}" for k, v in expect.items()
            if k in meta and tuple(meta[k][0]) != v]
    for key, wanted, what in (("output_layer.weight", s.untie_embeddings_and_output_weights,
                               "untied output layer"),
                              ("embedding.position_embeddings.weight",
                               s.position_embedding_type == "learned_absolute",
                               "learned position embeddings")):
        if (key in meta) != wanted:
            diff.append(f"{what}: checkpoint {'yes' if key in meta else 'no'}, this run "
                        f"{'yes' if wanted else 'no'}")
    if diff:
        raise ConfigError(f"--load {root}: the checkpoint's tensors differ from this run's "
                          f"model: {'; '.join(diff)}; give the model flags the checkpoint was "
                          "made with")


def read_training_prompts(cfg: TrainingConfig, tokenizer) -> PromptSource:
    """The run's prompt source, read and checked before anything is allocated (ConfigError
    naming file, row and field for a bad row)."""
    from megatron_hpt.training.rl.config import uses_demonstrations
    from megatron_hpt.training.held_out import prompt_source
    need = cfg.loss_preset == "sft" or uses_demonstrations(cfg)
    source = prompt_source(cfg, tokenizer, cfg.data_path, cfg.seed, need_demonstrations=need)
    check_prompts(source, tokenizer, cfg.seq_length, cfg.data_path, cfg.data_skip_bad_rows, need)
    path = cfg.eval_data_path or BUILTIN  # held-out prompts of --eval-interval and the final eval
    check_prompts(prompt_source(cfg, tokenizer, path, cfg.seed), tokenizer, cfg.seq_length, path,
                  cfg.data_skip_bad_rows)
    if source.skipped:
        print(f" data: {cfg.data_path}: {len(source.records)} rows, {source.skipped} bad rows "
              "skipped (--data-skip-bad-rows)", flush=True)
    return source


# ============================ all of it ============================

def prepare(argv=None):
    """Flags -> (args, world, tokenizer, config, prompt source), every check made; raises
    ``ConfigError`` (one line) before any process group, model or rollout exists."""
    from megatron_hpt.arguments import build_config, build_parser
    from megatron_hpt.data.tokenizer import load_tokenizer
    from megatron_hpt.training import distributed

    args = build_parser().parse_args(argv)
    check_flags(args)
    world = distributed.world_from_env()
    try:
        tokenizer = load_tokenizer(args.hf_model or "builtin:char")
    except (OSError, ValueError) as e:
        raise ConfigError(f"--hf-model {args.hf_model}: cannot load its tokenizer ({e})") from None
    try:
        cfg = build_config(args, world.world_size, tokenizer_vocab_size=len(tokenizer))
    except (FileNotFoundError, KeyError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"--hf-model {args.hf_model}: {e}") from None
    if cfg.load:
        check_load(cfg)
    if cfg.save:
        check_output_dir(cfg.save, "--save", checkpoint_bytes(cfg))
    if cfg.tensorboard_dir:
        check_output_dir(cfg.tensorboard_dir, "--tensorboard-dir")
    prompts = read_training_prompts(cfg, tokenizer)
    return args, world, tokenizer, cfg, prompts


def one_line(message: str) -> str:
    """A multi-line error (``validate``'s list) as one line: ``head: first; second``."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    parts = [p[2:] if p.startswith("- ") else p for p in parts]
    if len(parts) > 1 and parts[0].endswith(":"):
        return parts[0] + " " + "; ".join(parts[1:])
    return "; ".join(parts)
