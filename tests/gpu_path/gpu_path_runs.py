"""Rank entry points of the device check (test_gpu_path_on_cpu.py): the project's real code with
the accelerator a device distinct from the CPU (device_check.py). Each runs in a fresh spawned
process, on 2 gloo ranks."""
from __future__ import annotations

import ctypes
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = [
    "--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "128",
    "--num-attention-heads", "4", "--num-query-groups", "2", "--seq-length", "32",
    "--max-position-embeddings", "64", "--normalization", "RMSNorm", "--swiglu",
    "--position-embedding-type", "rope", "--disable-bias-linear",
    "--untie-embeddings-and-output-weights", "--lr", "1e-3", "--seed", "5", "--log-interval", "1",
    "--train-iters", "1",
]
SFT = TINY + ["--loss-preset", "sft", "--micro-batch-size", "2", "--global-batch-size", "4"]
#: hpt with demonstrations and the gate; old log-probs recomputed by the training model
RL = TINY + ["--loss-preset", "hpt", "--rollout-batch-size", "2", "--n-samples-per-prompt", "2",
             "--micro-batch-size", "3", "--rollout-max-response-len", "6",
             "--rollout-logprobs", "recompute"]


def _enter(library: str):
    """Check mode on, gloo process group up (before anything of megatron-hpt runs)."""
    import torch
    sys.path.insert(0, HERE)
    import device_check
    ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)  # the CUDA device guard
    torch.set_num_threads(1)
    mode = device_check.enable()
    device_check.init_gloo()
    return device_check, mode


def _layout_done():
    from megatron.core import parallel_state
    parallel_state.destroy_model_parallel()


def _on_accelerator(model_chunks) -> bool:
    from device_check import OnAccelerator
    return all(isinstance(p, OnAccelerator) for c in model_chunks for p in c.parameters())


def real_code_paths(library: str) -> dict:
    """SFT step and RL (hpt, embedded engine) step at DP2 through ``train.run``, then weight
    export at TP2 and at PP2. Returns what each part produced and the collectives checked."""
    device_check, mode = _enter(library)
    from megatron_hpt.train import run
    _short_final_evaluation()
    out = {}
    sft = run(SFT)
    out["sft loss"] = sft["metrics"][0]["lm loss"]
    out["sft model on accelerator"] = _on_accelerator(sft["model"])
    _layout_done()
    rl = run(RL)
    m = rl["metrics"][0]
    out["rl loss"], out["rl reward"] = m["lm loss"], m["reward"]
    out["rl logprob gap"] = m.get("rollout logprob gap")
    _layout_done()
    out["export tp2"] = _export(["--tensor-model-parallel-size", "2"])
    out["export pp2"] = _export(["--pipeline-model-parallel-size", "2"])
    out["collectives"] = mode.collectives
    out["without batch move"] = _sft_step_without_batch_move(device_check)
    return out


def _short_final_evaluation():
    """The end-of-run greedy evaluation on 4 held-out problems instead of 64 (same code)."""
    from megatron_hpt.training import tasks
    from megatron_hpt.training.rl import task as rl_task
    for cls in (tasks.SftTask, rl_task.RlTask):
        evaluate = cls.evaluate
        cls.evaluate = lambda self, model, num_problems=4, _e=evaluate: _e(self, model, num_problems)


def _export(layout) -> dict:
    from megatron_hpt.arguments import build_config, build_parser
    from megatron_hpt.data.tokenizer import build_char_tokenizer
    from megatron_hpt.rollout.weights import export_hf_weights
    from megatron_hpt.training import distributed
    from megatron_hpt.training.setup import build_model
    import torch.distributed as dist
    cfg = build_config(build_parser().parse_args(SFT + layout), dist.get_world_size(),
                       tokenizer_vocab_size=len(build_char_tokenizer()))
    distributed.initialize(cfg.parallel.tensor_model_parallel_size,
                           cfg.parallel.pipeline_model_parallel_size, seed=cfg.seed)
    model = build_model(cfg)
    names = {}
    for bucket in export_hf_weights(model, cfg.shape, bucket_mb=0.05):
        for name, t in bucket:
            names[name] = (tuple(t.shape), t.device.type)
    _layout_done()
    return names


def _sft_step_without_batch_move(device_check) -> str:
    """The SFT step with ``Batch.to`` made a no-op (the batch stays on the CPU): the check must
    refuse it. Returns the error text."""
    from megatron_hpt.loss.batch import Batch
    from megatron_hpt.train import run
    moved = Batch.to
    Batch.to = lambda self, device, non_blocking=False: self  # the move removed
    try:
        run(SFT)
    except device_check.DeviceMismatch as e:
        return str(e)
    finally:
        Batch.to = moved
        _layout_done()
    return "no error"
