"""training/offload.py: the state machine, and a bitwise round trip of a real megatron run's
params, grad buffers and Adam state through an offload (device storages really released)."""
import pytest
import torch

from dist_utils import run_distributed
from megatron_hpt.training.offload import OFFLOADED, ON_DEVICE, StorageOffloader
from training.common import TINY_MODEL, TRAIN


def test_state_machine_and_views():
    base = torch.arange(12, dtype=torch.float32)
    view = base[3:7]
    logs = []
    off = StorageOffloader("t", [base, view], log=logs.append)  # one storage, counted once
    assert off.nbytes == 48 and off.state == ON_DEVICE
    with pytest.raises(RuntimeError, match="restore\\(\\) while on_device"):
        off.restore()
    off.offload()
    assert off.state == OFFLOADED and base.untyped_storage().nbytes() == 0
    with pytest.raises(RuntimeError, match="offload\\(\\) while offloaded"):
        off.offload()
    off.restore()
    assert torch.equal(base, torch.arange(12, dtype=torch.float32))
    assert torch.equal(view, torch.tensor([3.0, 4.0, 5.0, 6.0]))  # the view follows its storage
    off.offload()  # the KL reference's pattern: on the host, brought in per use
    with off.resident():
        assert off.state == ON_DEVICE and torch.equal(view, torch.tensor([3.0, 4.0, 5.0, 6.0]))
    assert off.state == OFFLOADED
    assert logs[0].startswith("t: offload 0.000 GiB in") and len(logs) == 5


def _round_trip():
    from megatron_hpt.arguments import build_config, build_parser
    from megatron_hpt.data.tokenizer import build_char_tokenizer
    from megatron_hpt.training import distributed
    from megatron_hpt.training.offload import train_state_offloader, training_state_tensors
    from megatron_hpt.training.setup import build_model, build_optimizer
    from megatron_hpt.training.preflight import read_training_prompts
    from megatron_hpt.training.tasks import build_task
    from megatron_hpt.training.step import train_step
    tok = build_char_tokenizer()
    cfg = build_config(build_parser().parse_args(TINY_MODEL + TRAIN), 1, tokenizer_vocab_size=len(tok))
    distributed.initialize(seed=cfg.seed)
    try:
        model = build_model(cfg)
        optimizer, scheduler = build_optimizer(cfg, model)
        task = build_task(cfg, tok, model, read_training_prompts(cfg, tok))
        mb = task.micro_batches(0)
        task.attach_normalizers(mb)
        train_step(model, optimizer, scheduler, mb, task.loss_fn, cfg.seq_length)  # Adam state exists
        tensors = training_state_tensors(model, optimizer)
        before = [t.detach().clone() for t in tensors]
        n_adam = sum(len(st) for opt in getattr(optimizer, "chained_optimizers", [optimizer])
                     for st in opt.optimizer.state.values())  # exp_avg, exp_avg_sq, step
        off = train_state_offloader(model, optimizer, log=None)
        off.offload()
        released = all(t.untyped_storage().nbytes() == 0 for t in tensors)
        off.restore()
        same = all(torch.equal(a.view(torch.uint8) if a.dim() else a, b.view(torch.uint8) if b.dim() else b)
                   for a, b in zip(tensors, before))
        # and training continues from the restored state exactly as without the offload
        mb = task.micro_batches(1)
        task.attach_normalizers(mb)
        loss = train_step(model, optimizer, scheduler, mb, task.loss_fn, cfg.seq_length)["lm loss"]
        return released, same, off.nbytes, n_adam, loss
    finally:
        distributed.destroy()


def test_training_state_round_trips_bitwise():
    (released, same, nbytes, n_adam, _), = run_distributed(_round_trip, 1)
    assert released and same
    assert nbytes > 0 and n_adam > 0
