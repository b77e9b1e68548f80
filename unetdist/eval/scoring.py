"""What scoring a split shares between the binary, multi-class and multi-label paths
(`evaluate.py`, `evaluate_classes.py`, `evaluate_labels.py`): the loop's timed predictions with
their progress bar and up-front cost estimate, the gathered per-image rows, the barrier after
the files, a sample's original size and host masks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unetdist.config import EvalConfig
from unetdist.distributed import gather_objects, rank_of_process
from unetdist.eval.inference import InferencePolicy, image_scale, sliding_window_predict
from unetdist.eval.windows import forward_count, inference_size
from unetdist.log import progress_iter, say, world_size


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


def predicted(model: nn.Module, samples: Iterable[dict], cfg: EvalConfig,
              policy: InferencePolicy, *, progress: bool, estimate: bool,
              **kind: bool) -> Iterator[tuple[dict, float, torch.Tensor, float]]:
    """(sample, eval.scale factor, probabilities, seconds) of each sample (`timed_predict`;
    KIND: classes / labels) under one progress bar. With ESTIMATE the cost line follows the
    first image: rank 0 speaks for the job (it holds a share whenever there are enough)."""
    total = len(samples) if hasattr(samples, "__len__") else None
    bar = progress_iter(samples, total, desc="evaluate", unit="img", enabled=progress)
    for i, s in enumerate(bar):
        scale = image_scale(cfg, s["fov"])  # eval.scale: 1.0 unless asked
        prob, seconds = timed_predict(model, s, cfg, policy, scale, **kind)
        if estimate and i == 0:
            shape = inference_size(*s["image"].shape[-2:], cfg, scale)
            say(estimate_line(model, len(samples), shape, cfg, seconds, world_size()))
        yield s, scale, prob, seconds


def gathered_rows(rows: list[dict]) -> tuple[list[dict], float | None]:
    """Every rank's per-image ROWS sorted by key (a collective: every rank calls it), and the
    mean seconds per image."""
    per_image = sorted((r for part in gather_objects(rows) for r in part),
                       key=lambda r: r["key"])
    seconds = [r["seconds"] for r in per_image]
    return per_image, round(float(np.mean(seconds)), 4) if seconds else None


def write_split_files(per_image: list[dict], cfg: EvalConfig, out_dir: Path, overlays,
                      accelerator, rank0_files: Callable[[], None]) -> None:
    """Every rank its overlay figures (of the first eval.num_overlays ids), rank 0 RANK0_FILES
    (metrics.json, per_image.csv, plots), then all ranks wait for them."""
    overlays.write([r["key"] for r in per_image[:cfg.num_overlays]], out_dir / "plots")
    if rank_of_process() == 0:
        rank0_files()
    barrier(accelerator)


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
