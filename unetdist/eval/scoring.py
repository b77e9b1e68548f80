"""What scoring a split shares between the binary and the multi-class path (`evaluate.py`,
`evaluate_classes.py`): the timed prediction of one sample, the up-front cost estimate, the
barrier after the files, a sample's original size and host masks."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from unetdist.config import EvalConfig
from unetdist.eval.inference import InferencePolicy, sliding_window_predict
from unetdist.eval.windows import forward_count


def barrier(accelerator) -> None:
    import torch.distributed as dist

    if accelerator is not None:
        accelerator.wait_for_everyone()
    elif dist.is_available() and dist.is_initialized():
        dist.barrier()


def original_size(sample: dict) -> tuple[int, int]:
    meta = sample.get("meta") or {}
    if "height" in meta and "width" in meta:
        return int(meta["height"]), int(meta["width"])
    return tuple(sample["rgb"].shape[:2])


def timed_predict(model: nn.Module, s: dict, cfg: EvalConfig, policy: InferencePolicy,
                  scale: float, classes: bool = False,
                  labels: bool = False) -> tuple[torch.Tensor, float]:
    """(probabilities, seconds) of sample S: vessel (1,1,H,W), class (1,K,H,W) probabilities
    with CLASSES, label (1,C,H,W) probabilities with LABELS."""
    t0 = time.perf_counter()
    prob = sliding_window_predict(model, s["image"], cfg, policy=policy, scale=scale,
                                  classes=classes, labels=labels)
    if prob.device.type == "cuda":
        torch.cuda.synchronize(prob.device)
    return prob, time.perf_counter() - t0


def estimate_line(model: nn.Module, images: int, shape: tuple[int, int], cfg: EvalConfig,
                  seconds: float, processes: int = 1) -> str:
    """What this process's share will cost: images x windows x views, timed on one image."""
    tiles, n_views, forwards = forward_count(*shape, cfg, model)
    per_forward = seconds / forwards
    total = images * seconds
    how = "whole image" if cfg.tile == 0 else f"{cfg.tile} px tiles, overlap {cfg.overlap}"
    return (f"estimate: {images} images x {tiles} windows ({how}) x {n_views} views = "
            f"{images * tiles * n_views} windows in {images * forwards} forwards of <= "
            f"{cfg.batch_size}; {per_forward:.2f} s per forward on the first image -> about "
            f"{total:.0f} s ({seconds:.2f} s per image)"
            + (f", each of {processes} processes scoring its share" if processes > 1 else ""))


def host_mask(t: torch.Tensor) -> np.ndarray:
    return t.reshape(t.shape[-2:]).cpu().numpy() > 0.5
