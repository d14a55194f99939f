"""A CPU-only test mode in which the accelerator is a device distinct from the CPU.

``enable()`` (call it in a fresh process, before megatron-hpt initialises anything) makes the
project's ``cuda`` requests land on a stand-in accelerator with CPU memory behind it:

- ``OnAccelerator``: a tensor subclass holding a CPU tensor (``cpu_data``) and reporting the
  ``meta`` device. Not ``cuda``: autograd asks the accelerator hooks about every CUDA input,
  and a CPU-only build has none (``Cannot access accelerator device``); ``meta`` is a device
  distinct from the CPU that autograd accepts. Code asks for ``cuda`` (or ``device=0``, or
  ``x.device``) and gets an ``OnAccelerator``.
- ``DeviceCheckMode`` (a TorchDispatchMode, active for the rest of the process): every ATen op
  runs on the CPU tensors behind its arguments; its outputs are ``OnAccelerator`` when an input
  was (or the op was asked for ``device='cuda'``/``'meta'``). An op that mixes an accelerator
  tensor with a CPU tensor of one or more dimensions raises ``DeviceMismatch``, as CUDA kernels
  do (0-dim CPU scalars, cross-device ``copy_``/``to`` and CPU index tensors are allowed, as on
  a GPU). Collectives (the ``c10d`` ops behind ``torch.distributed``) must get accelerator
  tensors only, as NCCL requires: a CPU tensor raises ``DeviceMismatch``. They then run on gloo
  with the CPU tensors, so several processes really communicate. Object collectives
  (``all_gather_object`` & co) choose their buffers' device from the backend themselves and
  are let through.
- ``IntDeviceIsCuda`` (a TorchFunctionMode): ``device=0`` means ``cuda:0``; ``Tensor.cuda()``;
  ``torch.tensor(data, device='cuda')``; ``t.data = u`` keeps the CPU values in step.
- a tiny C++ library (``fake_cuda_guard.cpp``, built by ``fake_cuda.build``, loaded with ctypes
  by the caller) registers a do-nothing CUDA device guard, which ``.to('cuda')`` needs.
- ``torch.cuda``'s device, RNG and synchronisation calls are answered on the CPU (what
  ``platform.py`` does for megatron-core), ``torch.cuda.is_available()`` is True, so the
  project takes its GPU branches (the process group must be gloo: ``init_gloo``).

Cost: every op goes through Python (tiny models only). Values are real: rollouts, rewards and
losses are computed as on the CPU path.
Used by tests/gpu_path/test_gpu_path_on_cpu.py; never imported by the library.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

#: what accelerator tensors report. Not "cuda": a CPU-only build has no CUDA accelerator hooks,
#: and autograd asks them for streams of every non-CPU, non-meta device. "meta" is a device
#: distinct from the CPU that autograd runs on without hooks; code asks for "cuda" and gets it.
ACCELERATOR = torch.device("meta")
_ACCELERATOR_TYPES = ("cuda", "meta")
_ENABLED = False
_MODE = None


class DeviceMismatch(RuntimeError):
    """A CPU tensor met an accelerator tensor where a GPU would refuse it."""


class OnAccelerator(torch.Tensor):
    """A tensor on ``cuda:0`` whose values live in the CPU tensor ``self.cpu_data``."""

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        t = torch.Tensor._make_wrapper_subclass(
            cls, data.shape, strides=data.stride(), storage_offset=data.storage_offset(),
            dtype=data.dtype, layout=data.layout, device=ACCELERATOR, requires_grad=False)
        t.cpu_data = data
        return t

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        # reached when the mode is off the stack (inside the mode's own handler): same rules
        if _MODE is None:
            raise RuntimeError("OnAccelerator tensors need DeviceCheckMode (device_check.enable())")
        return _MODE.run(func, args, kwargs or {})

    def __repr__(self):
        return f"OnAccelerator({self.cpu_data!r})"

    def tolist(self):  # a device-to-host copy, as on a GPU (subclasses lack the C fast path)
        return self.cpu_data.tolist()


#: ops that legitimately take tensors of two devices (as on a GPU)
_CROSS_DEVICE = {"aten::copy_", "aten::_to_copy", "aten::to", "aten::_copy_from",
                 "aten::_copy_from_and_resize", "aten::set_"}
_INDEX = {"aten::index", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_"}
#: collectives that carry no tensor of the caller's
_NO_TENSOR_COLLECTIVES = {"c10d::barrier", "c10d::monitored_barrier_"}


def _device_kw(kwargs):
    d = kwargs.get("device")
    return None if d is None else torch.device(d)


def _unwrap(x):
    return x.cpu_data if isinstance(x, OnAccelerator) else x


class DeviceCheckMode(TorchDispatchMode):
    """See the module docstring. ``collectives`` counts the checked c10d calls."""

    def __init__(self):
        super().__init__()
        self.collectives = 0
        self.object_collective = 0  # > 0 inside all_gather_object & co

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self.run(func, args, kwargs or {})

    def run(self, func, args, kwargs):
        name = func._schema.name
        flat, _ = tree_flatten((args, kwargs))
        tensors = [x for x in flat if isinstance(x, torch.Tensor)]
        on_acc = [x for x in tensors if isinstance(x, OnAccelerator)]
        on_cpu = [x for x in tensors if not isinstance(x, OnAccelerator) and x.device.type == "cpu"]
        if name.startswith("c10d::"):
            if on_cpu and name not in _NO_TENSOR_COLLECTIVES and not self.object_collective:
                raise DeviceMismatch(
                    f"{name}: collective on CPU tensors {[tuple(t.shape) for t in on_cpu]} "
                    f"(dtype {on_cpu[0].dtype}); NCCL needs them on the accelerator")
            self.collectives += 1
        elif on_acc and on_cpu and name not in _CROSS_DEVICE:
            big = [t for t in on_cpu if t.dim() > 0]
            if name in _INDEX:  # CPU indices into an accelerator tensor are fine on a GPU
                self_arg = args[0]
                big = [] if isinstance(self_arg, OnAccelerator) else big
            if big:
                raise DeviceMismatch(
                    f"{name}: expected all tensors on the same device, got the accelerator "
                    f"(cuda, '{ACCELERATOR.type}' here) and cpu (CPU shapes "
                    f"{[tuple(t.shape) for t in big]})")
        target = _device_kw(kwargs)
        if target is not None and target.type in _ACCELERATOR_TYPES:
            kwargs = dict(kwargs, device=torch.device("cpu"))
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        if name.startswith("c10d::"):
            return _rewrap_like(out, args)
        if target is not None:
            wrap = target.type in _ACCELERATOR_TYPES
        else:
            wrap = bool(on_acc)
        if not wrap:
            return out
        # in-place / out= ops return their input: hand back the same wrapper object
        by_id = {id(x.cpu_data): x for x in on_acc}

        def rewrap(o):
            if not isinstance(o, torch.Tensor) or isinstance(o, OnAccelerator):
                return o
            same = by_id.get(id(o))
            if same is not None and same.shape != o.shape:
                raise RuntimeError(f"device check: {name} resized an accelerator tensor in place "
                                   f"({tuple(same.shape)} -> {tuple(o.shape)}); not supported")
            return OnAccelerator(o) if same is None else same
        return tree_map(rewrap, out)


_DATA_SET = torch._C.TensorBase.data.__set__


class IntDeviceIsCuda(TorchFunctionMode):
    """``device=0`` means ``cuda:0`` (megatron passes ``torch.cuda.current_device()``); a
    CPU-only build would ask its (absent) accelerator hooks. ``Tensor.cuda()`` is ``to('cuda')``;
    ``torch.tensor(data, device='cuda')`` is built on the CPU and moved (its CUDA allocation
    happens below the dispatch modes)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        d = kwargs.get("device")
        if isinstance(d, int) and not isinstance(d, bool):
            kwargs = dict(kwargs, device=torch.device("cuda", d))
        if func == _DATA_SET and isinstance(args[0], OnAccelerator):
            # ``t.data = u`` swaps the metadata of ``t`` (megatron's make_viewless_tensor): the
            # CPU values behind it must follow
            func(*args, **kwargs)
            args[0].cpu_data = _unwrap(args[1])
            return None
        d = kwargs.get("device")
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and args \
                and isinstance(args[0], (list, tuple)):  # a list of device scalars: read them
            args = (tree_map(_unwrap, args[0]),) + tuple(args[1:])
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and d is not None \
                and torch.device(d).type in _ACCELERATOR_TYPES:  # built below the modes
            return func(*args, **dict(kwargs, device="cpu")).to(d)
        if func is torch.Tensor.cuda:
            return args[0].to("cuda", **{k: v for k, v in kwargs.items() if k == "non_blocking"})
        if func is torch.Tensor.to and len(args) > 1 and isinstance(args[1], int) \
                and not isinstance(args[1], bool):
            args = (args[0], torch.device("cuda", args[1])) + tuple(args[2:])
        return func(*args, **kwargs)


def _object_collective(fn):
    def wrapper(*args, **kwargs):
        _MODE.object_collective += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _MODE.object_collective -= 1
    return wrapper


def _rewrap_like(out, args):
    """c10d ops return (their input tensors, work): give back the caller's wrappers."""
    flat_in, _ = tree_flatten(args)
    by_id = {id(x.cpu_data): x for x in flat_in if isinstance(x, OnAccelerator)}
    return tree_map(lambda o: by_id.get(id(o), o) if isinstance(o, torch.Tensor) else o, out)


def _stub_torch_cuda():
    """torch.cuda answers for one device on the CPU; megatron-core's CUDA-only asserts relaxed."""
    import megatron.core.optimizer.optimizer as mcore_optimizer
    import megatron.core.tensor_parallel.random as mcore_random
    from megatron_hpt.platform import _clip_grad_by_total_norm_cpu

    cuda = torch.cuda
    cuda._lazy_init = lambda: None  # factories with device='cuda' initialise CUDA first
    cuda.is_available = lambda: True
    cuda.device_count = lambda: 1
    cuda.current_device = lambda: 0
    cuda.set_device = lambda *a, **k: None
    cuda.synchronize = lambda *a, **k: None
    cuda.empty_cache = lambda: None
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.random.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(seed)
    cuda.manual_seed_all = lambda seed: None  # torch.manual_seed calls it: the CPU one is seeded
    mcore_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    mcore_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mcore_optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_cpu
    # object collectives pick their buffers' device from the backend themselves (the device
    # for NCCL): not the caller's choice, so their CPU buffers are let through
    for fname in ("all_gather_object", "broadcast_object_list", "gather_object",
                  "scatter_object_list"):
        setattr(dist, fname, _object_collective(getattr(dist, fname)))


def enable() -> DeviceCheckMode:
    """Enter the check mode for the rest of this process (idempotent); returns the mode."""
    global _ENABLED, _MODE
    if _ENABLED:
        return _MODE
    _stub_torch_cuda()
    _MODE = DeviceCheckMode()
    _MODE.__enter__()
    IntDeviceIsCuda().__enter__()
    _ENABLED = True
    return _MODE


def init_gloo() -> None:
    """The default process group on gloo (the library would pick NCCL: cuda looks available)."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=int(os.environ.get("RANK", 0)),
                                world_size=int(os.environ.get("WORLD_SIZE", 1)))
