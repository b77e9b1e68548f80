"""Evaluate a model on a split, distributed: each rank scores its images, one all-reduce sums.

`evaluate_checkpoints` is the whole `unetdist evaluate` job (the command only parses its
arguments): load the model(s) once per process, pick and check the output folder, score the
split, write the files. `evaluate_split` is the scoring itself, used by it and by the trainer
(validation, no files). Every rank writes the prediction PNGs of its own images (so the output
folder must be on storage all ranks see when evaluating on several nodes); rank 0 writes
metrics.json, per_image.csv and the plots. Overlays are drawn for the first `eval.num_overlays`
sample ids of the split (sorted), whichever rank holds them, so they do not depend on the
world size.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unetdist.config import EvalConfig
from unetdist.distributed import gather_objects, rank_of_process
from unetdist.eval import outputs
from unetdist.eval.inference import (
    InferencePolicy,
    image_scale,
    inference_policy,
    sliding_window_predict,
    unwrap,
)
from unetdist.eval.metrics import MetricState
from unetdist.eval.threshold import fixed_threshold
from unetdist.eval.windows import forward_count, inference_size
from unetdist.log import progress_iter, say, world_size


def _barrier(accelerator) -> None:
    import torch.distributed as dist

    if accelerator is not None:
        accelerator.wait_for_everyone()
    elif dist.is_available() and dist.is_initialized():
        dist.barrier()


def _original_size(sample: dict) -> tuple[int, int]:
    meta = sample.get("meta") or {}
    if "height" in meta and "width" in meta:
        return int(meta["height"]), int(meta["width"])
    return tuple(sample["rgb"].shape[:2])


def _timed_predict(model: nn.Module, s: dict, cfg: EvalConfig, policy: InferencePolicy,
                   scale: float) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    prob = sliding_window_predict(model, s["image"], cfg, policy=policy, scale=scale)
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


def _host_mask(t: torch.Tensor) -> np.ndarray:
    return t.reshape(t.shape[-2:]).cpu().numpy() > 0.5


def evaluate_split(model: nn.Module, samples: Iterable[dict], cfg: EvalConfig, *,
                   accelerator=None, out_dir: Path | None = None,
                   info: dict | None = None, progress: bool = True,
                   estimate: bool = False, chosen: float | None = None) -> dict:
    """Score every sample (each rank its share), all-reduce once, return identical results.

    Returns {"num_images", "fov": {...}, "image": {...}, "topology": {...},
    ["second_observer"], "f1_threshold", ["at_threshold"], "seconds_per_image",
    "per_image": [rows sorted by key]}. Metrics and topology are at eval.threshold (0.5 under
    auto); with `chosen` (the threshold auto chose), "at_threshold" holds the FOV and image
    metrics there too, and the masks written are at `chosen`. With out_dir, writes predictions
    (each rank its images), overlays, and on rank 0 metrics.json (with `info` under "info"),
    per_image.csv and plots/. `estimate` prints what the rest will cost after the first image.
    """
    model = unwrap(model)
    policy = inference_policy(model, accelerator=accelerator)  # once for every image
    out_dir = Path(out_dir) if out_dir is not None else None
    fixed = fixed_threshold(cfg)
    mask_threshold = fixed if chosen is None else chosen
    state = MetricState(cfg.auc_bins, fixed)
    rows, overlays = [], outputs.OverlayCache(cfg.num_overlays if out_dir else 0)
    total = len(samples) if hasattr(samples, "__len__") else None
    for s in progress_iter(samples, total, desc="evaluate", unit="img", enabled=progress):
        scale = image_scale(cfg, s["fov"])  # eval.scale: 1.0 unless asked
        prob, seconds = _timed_predict(model, s, cfg, policy, scale)
        if estimate and not rows:
            shape = inference_size(*s["image"].shape[-2:], cfg, scale)
            # rank 0 speaks for the job (it holds a share whenever there are enough images)
            say(estimate_line(model, len(samples), shape, cfg, seconds, world_size()))
        # The dataset defines everything outside the FOV as background and the loss never
        # sees it, so predictions there are zeroed (as `predict` does) rather than scored.
        prob = prob * s["fov"].to(prob.device, prob.dtype, non_blocking=True)
        row = state.update(prob, s["label"], s["fov"], s.get("label2"))
        p = prob[0, 0].float().cpu().numpy()
        row["topology"] = state.add_topology(p >= fixed, _host_mask(s["label"]),
                                             _host_mask(s["fov"]))
        rows.append({"key": s["key"], "height": int(prob.shape[-2]),
                     "width": int(prob.shape[-1]), "scale": round(scale, 4),
                     "seconds": round(seconds, 4), **row})
        if out_dir is not None:
            outputs.write_prediction_pngs(out_dir / "predictions", s["key"], p, mask_threshold,
                                          _original_size(s))
            overlays.offer(s["key"], s, p >= mask_threshold)
    state.reduce(accelerator)  # the one all-reduce: confusion, topology and histogram sums
    per_image = sorted((r for part in gather_objects(rows) for r in part),
                       key=lambda r: r["key"])
    seconds = [r["seconds"] for r in per_image]
    result = {**state.compute(), "per_image": per_image,
              "seconds_per_image": round(float(np.mean(seconds)), 4) if seconds else None}
    if chosen is not None:
        result["at_threshold"] = state.at_threshold(chosen)
    if out_dir is not None:
        _write_files(result, state, cfg, out_dir, info, overlays, accelerator)
    return result


def _write_files(result: dict, state: MetricState, cfg: EvalConfig, out_dir: Path,
                 info: dict | None, overlays: outputs.OverlayCache, accelerator) -> None:
    """Every rank its overlays; rank 0 metrics.json, per_image.csv and the plots."""
    per_image = result["per_image"]
    overlays.write([r["key"] for r in per_image[:cfg.num_overlays]], out_dir / "plots")
    if rank_of_process() == 0:
        outputs.write_metrics_json(result, cfg, out_dir / "metrics.json", info)
        outputs.write_per_image_csv(per_image, out_dir / "per_image.csv")
        outputs.write_plots(result, state, out_dir / "plots")
    _barrier(accelerator)


def summary_line(result: dict) -> str:
    """One line for logs: the FOV metrics that papers report, topology, the chosen threshold."""
    f = result["fov"]
    auc = "n/a" if f["auc_roc"] is None else f"{f['auc_roc']:.4f}"
    line = (f"{result['num_images']} images | FOV dice {f['dice']:.4f} mIoU {f['miou']:.4f} "
            f"recall {f['recall']:.4f} precision {f['precision']:.4f} "
            f"specificity {f['specificity']:.4f} acc {f['accuracy']:.4f} AUC-ROC {auc}")
    t = result.get("topology")
    if t is not None:
        line += (f" | clDice {t['cldice']:.4f} beta0 err {t['beta0_error']:.2f} "
                 f"beta1 err {t['beta1_error']:.2f} fragments {t['fragments_per_image']:.1f}")
    at = result.get("at_threshold")
    if at is not None:
        a = at["fov"]
        line += (f" | at the chosen threshold {at['threshold']:.4g}: FOV dice {a['dice']:.4f} "
                 f"recall {a['recall']:.4f} precision {a['precision']:.4f}")
    return line


# ----------------------------------------------------------------------------- the job


@dataclasses.dataclass
class Evaluation:
    """What `evaluate_checkpoints` did: the results and the folder holding its files."""

    result: dict
    out_dir: Path


def _shard_dir(data: str, split: str, local_dir: str | None, cfg) -> str:
    from unetdist.data.manifest import shard_paths

    shard_dir = data
    if local_dir:
        from unetdist.data.stage.node import resolve_data_dir

        shard_dir = resolve_data_dir(dataclasses.replace(cfg.data, shared_dir=data,
                                                         local_dir=local_dir, stage=True))
    # DataError naming the folder or split, before any work (data.fold: a k-fold model's val)
    shard_paths(shard_dir, split, cfg.data.fold)
    return str(Path(shard_dir).resolve())


def _info(checkpoints: list[Path], metas: list[dict], data: str, shard_dir: str, split: str,
          fold: int) -> dict:
    """metrics.json's "info": what was evaluated on what (world size etc. added later)."""
    from unetdist.data.manifest import manifest_hash, read_manifest

    paths = [str(p) for p in checkpoints]
    one = len(paths) == 1
    return {"checkpoint": paths[0] if one else paths,
            "step": metas[0].get("step") if one else [m.get("step") for m in metas],
            "ensemble": len(paths), "data": str(Path(data).resolve()), "shards": shard_dir,
            "manifest_hash": manifest_hash(read_manifest(shard_dir), fold), "split": split}


def _chosen(cfg: EvalConfig, checkpoint: Path, meta: dict) -> float | None:
    """Under eval.threshold=auto, the threshold stored with the (first) model, else 0.5."""
    from unetdist.eval.threshold import chosen_threshold, threshold_of

    if cfg.threshold != "auto":
        return None
    return chosen_threshold(cfg, threshold_of(checkpoint, meta))


def evaluate_checkpoints(checkpoints: Sequence[str | Path], data: str | Path,
                         split: str = "test", *, out: str | Path | None = None,
                         overrides: Sequence[str] = (), local_dir: str | None = None,
                         overwrite: bool = False, progress: bool = True) -> Evaluation:
    """Score a model (several: an ensemble) on SPLIT of the shards in DATA, write its files.

    The output folder is OUT, by default `outputs.default_out_dir` (one per data + split);
    either is refused when it holds another evaluation's results, unless OVERWRITE.
    `overrides` are `eval.key=value` settings. Runs on every process of a launch.
    """
    from unetdist.atomic import user_writes, writable_folder
    from unetdist.config import config_from_dict, to_dict
    from unetdist.data.pipeline import eval_samples
    from unetdist.distributed import make_accelerator, resolve_precision
    from unetdist.errors import UserError
    from unetdist.eval.ensemble import load_models
    from unetdist.eval.inference import apply_inference_format, resolve_checkpoint

    if len(checkpoints) > 1 and out is None:
        raise UserError("--out is required when several --checkpoint values form an ensemble")
    model, cfg, metas = load_models(checkpoints)  # each model once per process
    cfg = config_from_dict(to_dict(cfg), list(overrides), only="eval")
    shard_dir = _shard_dir(str(data), split, local_dir, cfg)  # before the process group
    resolved = [resolve_checkpoint(c).resolve() for c in checkpoints]
    info = _info(resolved, metas, str(data), shard_dir, split, cfg.data.fold)
    out_dir = Path(out) if out is not None else outputs.default_out_dir(resolved[0], data, split)
    writable_folder(out_dir, "--out")  # a file, a link to one, read-only: before any work
    stale = outputs.check_out_dir(out_dir, info, overwrite)  # every rank: one error each
    acc = make_accelerator(resolve_precision(cfg.train.precision, inference=True))
    if stale:  # --overwrite: the other evaluation's files go before any rank writes
        if acc.is_main_process:
            outputs.clear_results(out_dir)
        acc.wait_for_everyone()
    model = apply_inference_format(model.to(acc.device), cfg)  # training memory format
    samples = eval_samples(cfg.data, shard_dir, split, rank=acc.process_index,
                           world_size=acc.num_processes)
    info.update(world_size=acc.num_processes, device=acc.device.type,
                precision=acc.mixed_precision)
    with user_writes(out_dir, "write evaluation results into", "--out"):  # e.g. disk full
        result = evaluate_split(model, samples, cfg.eval, accelerator=acc, out_dir=out_dir,
                                info=info, progress=progress, estimate=True,
                                chosen=_chosen(cfg.eval, resolved[0], metas[0]))
    acc.end_training()
    return Evaluation(result, out_dir)
