"""megatron_hpt.platform on a CPU machine: the CUDA-literal redirect is on outside
``model_compute()`` and off inside it; a mode pushed above ours is left in place."""
import pytest
import torch
from torch.overrides import TorchFunctionMode

from megatron_hpt import platform

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the redirect is CPU-only")


def test_cuda_literal_redirected_outside_model_compute_only():
    platform.install_cpu_platform()
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    with platform.model_compute():
        assert torch.overrides._get_current_function_mode() is not platform._MODE
        with pytest.raises((AssertionError, RuntimeError)):  # torch without CUDA refuses it
            torch.zeros(2, device="cuda")
    assert torch.overrides._get_current_function_mode() is platform._MODE
    assert torch.zeros(2, device="cuda").device.type == "cpu"


def test_model_compute_leaves_a_foreign_mode_alone():
    platform.install_cpu_platform()
    calls = []

    class Counting(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            calls.append(func)
            return func(*args, **(kwargs or {}))

    with Counting():
        with platform.model_compute():
            torch.ones(1) + 1
            assert torch.zeros(1, device="cuda").device.type == "cpu"  # ours is still active
    assert calls
    assert torch.overrides._get_current_function_mode() is platform._MODE
