"""Counting the host syncs of a training step: CUDA's sync debug mode on a GPU, a fake on CPU.

On a GPU every read of a device value (`.item()`, `.tolist()`, `float(t)`, `bool(t)`, ...) and
every blocking host-to-device copy stalls the host until the GPU's queue drains; a step that
does several of them leaves the GPU idle between kernels. `torch.cuda.set_sync_debug_mode`
reports each one as a warning, which `CudaSyncCounter` counts. On CPU nothing stalls, so
`FakeSyncCounter` counts the calls that would: reads anywhere (torch, accelerate, us), and
copies (`torch.tensor(..., device=)`, `.to(device)` without non_blocking) only where the
calling module is ours, because on CPU a library's same-device `.to(grad.device)` (a no-op on a
GPU, as in clip_grad_norm_) cannot be told from a transfer. Reads inside torch.optim are not
counted: Adam's step counters live on the host by design (unless `capturable`).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator

import torch

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu")


def _caller(depth: int) -> str:
    return sys._getframe(depth).f_globals.get("__name__", "")


class FakeSyncCounter:
    """Patches torch.Tensor's read-backs and blocking copies; counts calls inside `counting`."""

    def __init__(self, ours: tuple[str, ...] = ("unetdist",)) -> None:
        self.ours = ours
        self.calls: list[str] = []
        self.last: list[str] = []
        self.active = False

    def _count(self, name: str) -> None:
        if self.active:
            self.calls.append(name)

    def _read(self, name: str, orig):
        def wrapper(t, *a, **kw):
            if not _caller(2).startswith("torch.optim"):
                self._count(name)
            was, self.active = self.active, False  # nested calls count once
            try:
                return orig(t, *a, **kw)
            finally:
                self.active = was
        return wrapper

    @contextlib.contextmanager
    def patched(self) -> Iterator[FakeSyncCounter]:
        saved = {name: getattr(torch.Tensor, name) for name in (*READS, "to")}
        orig_to, orig_tensor = torch.Tensor.to, torch.tensor

        def to(t, *a, **kw):
            if any(isinstance(x, (torch.device, str)) for x in (*a, kw.get("device"))) \
                    and not kw.get("non_blocking", False) and True not in a \
                    and _caller(2).startswith(self.ours):
                self._count("to(device)")
            return orig_to(t, *a, **kw)

        def tensor(*a, **kw):
            if kw.get("device") is not None and _caller(2).startswith(self.ours):
                self._count("tensor(device=)")
            return orig_tensor(*a, **kw)

        for name in READS:
            setattr(torch.Tensor, name, self._read(name, saved[name]))
        torch.Tensor.to, torch.tensor = to, tensor
        try:
            yield self
        finally:
            for name, fn in saved.items():
                setattr(torch.Tensor, name, fn)
            torch.tensor = orig_tensor

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        start, self.active = len(self.calls), True
        try:
            yield
        finally:
            self.active = False
            self.last = self.calls[start:]


class CudaSyncCounter:
    """Counts CUDA's own reports of synchronizing operations (sync debug mode "warn")."""

    def __init__(self) -> None:
        self.last: list[str] = []
        self._log: list | None = None

    @contextlib.contextmanager
    def patched(self) -> Iterator[CudaSyncCounter]:
        yield self

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        with warnings.catch_warnings(record=True) as log:
            warnings.simplefilter("always")  # the default shows each call site only once
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")
        self.last = [str(w.message).splitlines()[0] for w in log
                     if "synchronizing" in str(w.message)]


def sync_counter(device: torch.device) -> FakeSyncCounter | CudaSyncCounter:
    return CudaSyncCounter() if device.type == "cuda" else FakeSyncCounter()
