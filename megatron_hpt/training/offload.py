"""Colocation memory choreography: training state leaves the accelerator while vLLM generates.

As verl's ``offload_megatron_*`` and slime's ``--offload-train`` do, before the rollout phase the
Megatron params (and DDP's contiguous param buffers), the fp32 main-grad buffers and the optimizer
state (fp32 main params, Adam m and v) are copied to host memory (pinned on CUDA) and their device
storages are released (``untyped_storage().resize_(0)``: every view, e.g. a param inside DDP's
buffer, keeps pointing at the same storage object), then the allocator cache is emptied. After
the rollout the storages are re-allocated and the bytes copied back, bit for bit. The frozen KL
reference uses the same machinery the other way round: it lives on the host and is brought in
for its forward (``resident()``).

State machine (``StorageOffloader.state``):  on_device --offload()--> offloaded --restore()--> on_device
Any other transition raises. Each transition logs ``name: offload|restore N GiB in S s``.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Dict, Iterable, List, Optional

import torch

ON_DEVICE, OFFLOADED = "on_device", "offloaded"


def _bytes_view(storage: torch.UntypedStorage) -> torch.Tensor:
    """A uint8 tensor over the whole storage (same memory)."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


class StorageOffloader:
    """Moves the distinct storages behind ``tensors`` to host memory and back."""

    def __init__(self, name: str, tensors: Iterable[torch.Tensor],
                 log: Optional[Callable[[str], None]] = print):
        self.name, self.log, self.state = name, log, ON_DEVICE
        self._storages: Dict[int, torch.UntypedStorage] = {}
        for t in tensors:
            if t is None or t.numel() == 0:
                continue
            st = t.untyped_storage()
            self._storages.setdefault(st._cdata, st)
        self._host: Dict[int, torch.Tensor] = {}
        self._sizes: Dict[int, int] = {}
        self.last_transition: Dict[str, float] = {}

    @property
    def nbytes(self) -> int:
        """Bytes of the managed storages when on the device."""
        return sum(self._sizes.values()) if self.state == OFFLOADED else \
            sum(st.nbytes() for st in self._storages.values())

    def _record(self, what: str, nbytes: int, t0: float) -> None:
        secs = time.perf_counter() - t0
        self.last_transition = {"bytes": float(nbytes), "seconds": secs}
        if self.log is not None:
            self.log(f"{self.name}: {what} {nbytes / 2**30:.3f} GiB in {secs:.3f} s")

    def offload(self) -> None:
        """Copy every storage to host memory, then release it on the device."""
        if self.state != ON_DEVICE:
            raise RuntimeError(f"{self.name}: offload() while {self.state}; restore() first")
        t0, total = time.perf_counter(), 0
        for key, st in self._storages.items():
            n = st.nbytes()
            pin = st.device.type == "cuda"
            host = torch.empty(n, dtype=torch.uint8, pin_memory=pin)
            host.copy_(_bytes_view(st), non_blocking=pin)
            self._host[key], self._sizes[key] = host, n
            total += n
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        for st in self._storages.values():
            st.resize_(0)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.state = OFFLOADED
        self._record("offload", total, t0)

    def restore(self) -> None:
        """Re-allocate every storage on its device and copy the bytes back."""
        if self.state != OFFLOADED:
            raise RuntimeError(f"{self.name}: restore() while {self.state}; offload() first")
        t0, total = time.perf_counter(), 0
        for key, st in self._storages.items():
            st.resize_(self._sizes[key])
            _bytes_view(st).copy_(self._host[key], non_blocking=st.device.type == "cuda")
            total += self._sizes[key]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._host.clear()
        self.state = ON_DEVICE
        self._record("restore", total, t0)

    @contextlib.contextmanager
    def resident(self):
        """On the device inside the block, on the host outside (the KL reference's pattern)."""
        self.restore()
        try:
            yield
        finally:
            self.offload()


def training_state_tensors(model_chunks, optimizer) -> List[torch.Tensor]:
    """Params, DDP param/grad buffers, ``main_grad`` views and optimizer state of a megatron run."""
    out: List[torch.Tensor] = []
    for chunk in model_chunks:
        for p in chunk.parameters():
            out.append(p.data)
            if getattr(p, "main_grad", None) is not None:
                out.append(p.main_grad)
        for buf in list(getattr(chunk, "buffers", [])) + list(getattr(chunk, "expert_parallel_buffers", [])):
            out += [t for t in (getattr(buf, "param_data", None), getattr(buf, "grad_data", None))
                    if t is not None]
    if optimizer is not None:
        for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
            inner = getattr(opt, "optimizer", opt)
            for group in inner.param_groups:
                out += [p.data for p in group["params"]]
            for state in inner.state.values():
                out += [v for v in state.values() if torch.is_tensor(v) and v.dim() > 0]
    return out


def train_state_offloader(model_chunks, optimizer, log=print) -> StorageOffloader:
    """The offloader of a run's whole training state (what leaves the GPU before rollout)."""
    return StorageOffloader("training state", training_state_tensors(model_chunks, optimizer), log)
