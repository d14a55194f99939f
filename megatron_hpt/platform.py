"""Running megatron-core without CUDA: gloo process groups and CPU tensors.

megatron-core assumes a CUDA device in a handful of places. ``install_cpu_platform()`` redirects
exactly those, and nothing else, when (and only when) no GPU is present. It is called explicitly by
``megatron_hpt.training.distributed.initialize`` (never on import). What it changes and why:

1. ``torch.cuda.current_device()`` -> ``"cpu"``: megatron passes it as ``device=`` when it allocates
   weights (``tensor_parallel/layers.py``), grad buffers (``distributed/param_and_grad_buffer.py``)
   and p2p shape tensors (``pipeline_parallel/p2p_communication.py``).
2. ``torch.cuda.synchronize`` / ``empty_cache`` -> no-ops: called around communication and
   ``parallel_state`` setup; a CPU has nothing to wait for.
3. The CUDA RNG calls (``torch.cuda.get_rng_state``, ``manual_seed``, ``random._set_cuda_rng_state``)
   -> the CPU generator: ``tensor_parallel.random.CudaRNGStatesTracker`` forks the "model-parallel"
   RNG stream around dropout and initialisation; on CPU the fork saves/restores the CPU state.
4. ``device="cuda"`` / ``device='cuda'`` literals (``schedules.py`` ``total_num_tokens``,
   ``clip_grads.py``, ``optimizer.py`` ``found_inf``) and ``Tensor.cuda()`` -> CPU, through one
   ``TorchFunctionMode`` that rewrites only the ``device`` keyword of factory calls.
6. ``transformer.utils.get_default_causal_mask`` (``device="cuda"`` literal) -> a CPU mask: the
   mode of 4. is thread-local and is not active when autograd re-runs core attention in the
   backward (``--recompute-granularity``).
5. ``optimizer.clip_grad_by_total_norm_fp32`` asserts ``torch.cuda.FloatTensor`` grads; it is
   replaced by the same scaling without the assertion (the norm itself is computed by megatron).

Pitfalls seen and handled elsewhere: megatron's checkpoint writer needs ``psutil`` (without it
0.16.1 hangs), and the pipeline schedule divides the returned loss in place (we report a clone).
With several processes on 2 cores, one thread per process (oversubscription costs ~27x).
"""
from __future__ import annotations

import contextlib

import torch
import torch.overrides
from torch.overrides import TorchFunctionMode

_INSTALLED = False
_MODE = None  # the _CudaDeviceToCpu instance on the mode stack once installed


def cuda_available() -> bool:
    """True when training should run on CUDA (the normal megatron-core path)."""
    return torch.cuda.is_available()


class _CudaDeviceToCpu(TorchFunctionMode):
    """Rewrites ``device='cuda[:N]'`` keywords to ``'cpu'`` and makes ``Tensor.cuda()`` the identity."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if device is not None and str(device).startswith("cuda"):
            kwargs = dict(kwargs, device="cpu")
        if func is torch.Tensor.cuda:
            return args[0]
        return func(*args, **kwargs)


def _clip_grad_by_total_norm_cpu(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """megatron's ``clip_grad_by_total_norm_fp32`` without its CUDA-type assertion."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0:
        for p in parameters:
            g = getattr(p, attr, None)
            if g is not None:
                g.detach().mul_(clip_coeff)


def _causal_mask_cpu(sq: int) -> torch.Tensor:
    """megatron's ``get_default_causal_mask`` on the CPU."""
    return torch.triu(torch.ones(sq, sq, device="cpu"), diagonal=1).bool()


def install_cpu_platform() -> None:
    """Redirect megatron-core's CUDA calls to the CPU. Idempotent; a no-op when CUDA is available."""
    global _INSTALLED
    if _INSTALLED or cuda_available():
        return
    import megatron.core.optimizer.optimizer as mcore_optimizer
    import megatron.core.tensor_parallel.random as mcore_random

    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.empty_cache = lambda: None
    torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    torch.cuda.random.get_rng_state = lambda *a, **k: torch.get_rng_state()
    torch.cuda.manual_seed = lambda seed: torch.manual_seed(seed)
    mcore_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    mcore_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mcore_optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_cpu
    import megatron.core.fusions.fused_softmax as mcore_softmax
    import megatron.core.transformer.utils as mcore_utils
    mcore_utils.get_default_causal_mask = mcore_softmax.get_default_causal_mask = _causal_mask_cpu
    global _MODE
    _MODE = _CudaDeviceToCpu()
    _MODE.__enter__()  # stays on the mode stack for the life of the process
    _INSTALLED = True


@contextlib.contextmanager
def model_compute():
    """Suspends the mode of 4. around a dense GPT forward (training, log-prob and decoding
    passes). Its Python hook runs on every torch call: decoding the CPU demo's 64 rollouts takes
    1.12x (median) to 1.26x (best) as long with it (benchmarks/cpu_redirect.py). megatron-core's
    dense GPT forward has no ``device="cuda"`` literal (the causal-mask one is patched by 6.);
    every test that runs a model on CPU would fail on one ("Torch not compiled with CUDA
    enabled"). A no-op on CUDA, before ``install_cpu_platform()``, and when another mode sits
    above ours (then nothing is popped)."""
    if _MODE is None or torch.overrides._get_current_function_mode() is not _MODE:
        yield
        return
    with torch.overrides._pop_mode_temporarily():
        yield


def device() -> torch.device:
    """The device tensors of this process live on."""
    return torch.device("cuda", torch.cuda.current_device()) if cuda_available() else torch.device("cpu")
