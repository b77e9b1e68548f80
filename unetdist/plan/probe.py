"""A short measured probe: a few optimizer steps of the planned model on this device.

The planned config's model, loss and optimizer, one random batch at the planned crop and batch
size, under the planned precision. The first step (allocation, cuDNN autotuning) is not timed.
On CUDA the peak memory per sample is measured too, from which `plan` sizes the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from unetdist.distributed import resolve_precision
from unetdist.models.registry import build_model
from unetdist.train.losses import build_loss
from unetdist.train.optim import build_optimizer

if TYPE_CHECKING:
    from unetdist.config import RunConfig

PROBE_STEPS = 3


@dataclass(frozen=True)
class Probe:
    """What the probe measured."""

    seconds_per_step: float
    device: str  # cpu | cuda
    precision: str  # no | bf16 | fp16, as the run will resolve it
    peak_bytes_per_sample: int | None  # CUDA only


def _batch(cfg: RunConfig, batch_size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    side, c = cfg.data.crop, cfg.data.in_channels
    x = torch.randn(batch_size, c, side, side, generator=gen)
    label = (torch.rand(batch_size, 1, side, side, generator=gen) < 0.12).float()
    return x.to(device), label.to(device), torch.ones_like(label, device=device)


def measure_step(cfg: RunConfig, device: str, *, batch_size: int | None = None,
                 steps: int = PROBE_STEPS) -> Probe:
    """Seconds per optimizer step (median of STEPS timed steps) of CFG on DEVICE."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    precision = resolve_precision(cfg.train.precision, cuda=cuda)
    batch_size = batch_size or cfg.data.batch_size
    model = build_model(cfg.model, pretrained=False).to(dev).train()
    loss_fn, opt = build_loss(cfg.loss), build_optimizer(model.parameters(), cfg.optim)
    x, label, fov = _batch(cfg, batch_size, dev)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(model(x), label, fov)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize(dev)
        if i:  # the first step allocates and autotunes
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(dev) // batch_size if cuda else None
    times.sort()
    return Probe(times[len(times) // 2], dev.type, precision, peak)
