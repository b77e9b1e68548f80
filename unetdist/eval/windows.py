"""Window geometry of inference: whole-image padding, sliding-window tiles, their weights.

`window_plan` says which windows cover one (view of an) image; `forward_count` what an image
costs in network forwards (the evaluation's up-front estimate); `network_multiple` what the
network needs H and W to be a multiple of.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from unetdist.config import EvalConfig
from unetdist.eval.tta import views


@lru_cache(maxsize=8)
def gaussian(tile: int) -> torch.Tensor:
    sigma = tile / 8.0
    x = torch.arange(tile, dtype=torch.float64) - (tile - 1) / 2.0
    g = torch.exp(-(x**2) / (2 * sigma**2))
    w = torch.outer(g, g)
    return (w / w.max()).float()


@lru_cache(maxsize=8)
def gaussian_on(tile: int, device: torch.device) -> torch.Tensor:
    return gaussian(tile).to(device)  # one host-to-device copy per tile size, not per image


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile offsets along one axis of `length` >= tile; the last tile ends at the border."""
    stride = max(1, round(tile * (1.0 - overlap)))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def network_multiple(model: nn.Module) -> int:
    """What H and W must be a multiple of for the network to see no ragged border.

    timm/smp UNets expose their encoder's `stride`; the seed UNet halves `depth` times; an
    ensemble needs every member's multiple.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if hasattr(model, "members"):
        return math.lcm(*(network_multiple(m) for m in model.members))
    if isinstance(getattr(model, "stride", None), int):
        return model.stride
    if isinstance(getattr(model, "depth", None), int):
        return 2 ** model.depth
    return 1


@dataclass(frozen=True)
class WindowPlan:
    """The windows of one view: padded size (H, W), window size (th, tw), window offsets."""

    padded: tuple[int, int]
    window: tuple[int, int]
    starts: list[tuple[int, int]]


def window_plan(h: int, w: int, tile: int, overlap: float, multiple: int) -> WindowPlan:
    """Whole image padded to `multiple` (tile 0), else the sliding window's tiles."""
    if tile == 0:
        H, W = -(-h // multiple) * multiple, -(-w // multiple) * multiple
        return WindowPlan((H, W), (H, W), [(0, 0)])
    H, W = max(h, tile), max(w, tile)
    return WindowPlan((H, W), (tile, tile),
                      [(y, x) for y in tile_starts(H, tile, overlap)
                       for x in tile_starts(W, tile, overlap)])


def forward_count(h: int, w: int, cfg: EvalConfig, model: nn.Module) -> tuple[int, int, int]:
    """(windows per view, views, forwards) that an (h, w) inference input costs."""
    vs = views(cfg.tta)
    m = network_multiple(model)
    groups: dict[tuple[int, int], int] = {}
    for v in vs:
        vh, vw = (w, h) if v.k % 2 else (h, w)
        plan = window_plan(vh, vw, cfg.tile, cfg.overlap, m)
        groups[plan.window] = groups.get(plan.window, 0) + len(plan.starts)
    forwards = sum(-(-n // cfg.batch_size) for n in groups.values())
    return sum(groups.values()) // len(vs), len(vs), forwards


def inference_size(h: int, w: int, cfg: EvalConfig, scale: float) -> tuple[int, int]:
    """The (H, W) the network sees for an (h, w) image: eval.resize, else scaled."""
    if cfg.resize > 0:
        return cfg.resize, cfg.resize
    return max(1, round(h * scale)), max(1, round(w * scale))


