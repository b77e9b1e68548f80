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
from collections.abc import Iterable, Sequence
from pathlib import Path

from torch import nn

from unetdist.config import EvalConfig
from unetdist.data.classes import ClassTable
from unetdist.eval import outputs
from unetdist.eval.inference import inference_policy, unwrap
from unetdist.eval.metrics import MetricState
from unetdist.eval.scoring import estimate_line, gathered_rows, predicted, write_split_files
from unetdist.eval.scoring import host_mask as _host_mask
from unetdist.eval.scoring import original_size as _original_size
from unetdist.eval.threshold import fixed_threshold

__all__ = ["Evaluation", "estimate_line", "evaluate_checkpoints", "evaluate_split",
           "summary_line"]


def evaluate_split(model: nn.Module, samples: Iterable[dict], cfg: EvalConfig, *,
                   accelerator=None, out_dir: Path | None = None,
                   info: dict | None = None, progress: bool = True,
                   estimate: bool = False, chosen: float | None = None,
                   table: ClassTable | None = None,
                   stored_labels: dict[str, float] | None = None) -> dict:
    """Score every sample (each rank its share), all-reduce once, return identical results.

    A multi-class TABLE (not binary: the shards' `manifest.class_table`) scores a K-output
    softmax model: see `evaluate_classes.evaluate_class_split` for its result and files (the
    predicted class is the argmax; `chosen`/eval.threshold do not apply). Without a table, or
    with a binary one, the binary path below, exactly as before tables existed. A multi-label
    table: `evaluate_labels.evaluate_label_split` (STORED_LABELS: the per-label thresholds the
    model was trained with, for eval.threshold=auto).

    Returns {"num_images", "fov": {...}, "image": {...}, "topology": {...},
    ["second_observer"], "f1_threshold", ["at_threshold"], "seconds_per_image",
    "per_image": [rows sorted by key]}. Metrics and topology are at eval.threshold (0.5 under
    auto); with `chosen` (the threshold auto chose), "at_threshold" holds the FOV and image
    metrics there too, and the masks written are at `chosen`. With out_dir, writes predictions
    (each rank its images), overlays, and on rank 0 metrics.json (with `info` under "info"),
    per_image.csv and plots/. `estimate` prints what the rest will cost after the first image.
    """
    if table is not None and table.is_multilabel:
        from unetdist.eval.evaluate_labels import evaluate_label_split

        return evaluate_label_split(model, samples, cfg, table, accelerator=accelerator,
                                    out_dir=out_dir, info=info, progress=progress,
                                    estimate=estimate, stored=stored_labels)
    if table is not None and not table.is_binary:
        from unetdist.eval.evaluate_classes import evaluate_class_split

        return evaluate_class_split(model, samples, cfg, table, accelerator=accelerator,
                                    out_dir=out_dir, info=info, progress=progress,
                                    estimate=estimate)
    return _evaluate_binary(model, samples, cfg, accelerator=accelerator, out_dir=out_dir,
                            info=info, progress=progress, estimate=estimate, chosen=chosen)


def _evaluate_binary(model: nn.Module, samples: Iterable[dict], cfg: EvalConfig, *,
                     accelerator, out_dir: Path | None, info: dict | None, progress: bool,
                     estimate: bool, chosen: float | None) -> dict:
    """`evaluate_split` of a binary model (its docstring)."""
    model = unwrap(model)
    policy = inference_policy(model, accelerator=accelerator)  # once for every image
    out_dir = Path(out_dir) if out_dir is not None else None
    fixed = fixed_threshold(cfg)
    mask_threshold = fixed if chosen is None else chosen
    state = MetricState(cfg.auc_bins, fixed)
    rows, overlays = [], outputs.OverlayCache(cfg.num_overlays if out_dir else 0)
    for s, scale, prob, seconds in predicted(model, samples, cfg, policy, progress=progress,
                                             estimate=estimate):
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
    per_image, seconds = gathered_rows(rows)
    result = {**state.compute(), "per_image": per_image, "seconds_per_image": seconds}
    if chosen is not None:
        result["at_threshold"] = state.at_threshold(chosen)
    if out_dir is not None:
        _write_files(result, state, cfg, out_dir, info, overlays, accelerator)
    return result


def _write_files(result: dict, state: MetricState, cfg: EvalConfig, out_dir: Path,
                 info: dict | None, overlays: outputs.OverlayCache, accelerator) -> None:
    """Every rank its overlays; rank 0 metrics.json, per_image.csv and the plots."""
    per_image = result["per_image"]

    def rank0_files() -> None:
        outputs.write_metrics_json(result, cfg, out_dir / "metrics.json", info)
        outputs.write_per_image_csv(per_image, out_dir / "per_image.csv")
        outputs.write_plots(result, state, out_dir / "plots")
    write_split_files(per_image, cfg, out_dir, overlays, accelerator, rank0_files)


def summary_line(result: dict) -> str:
    """One line for logs: the FOV metrics that papers report, topology, the chosen threshold
    (a multi-class result: per-class Dice, mean IoU, the A/V numbers)."""
    if result.get("mode") == "multiclass":
        from unetdist.eval.evaluate_classes import class_summary_line

        return class_summary_line(result)
    if result.get("mode") == "multilabel":
        from unetdist.eval.evaluate_labels import label_summary_line

        return label_summary_line(result)
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


def _stored_labels(table: ClassTable, checkpoint: Path, meta: dict) -> dict[str, float] | None:
    """A multi-label model's stored per-label thresholds (None for other tables)."""
    from unetdist.eval.threshold import stored_label_thresholds
    from unetdist.runfolder import weights_file

    if not table.is_multilabel:
        return None
    return stored_label_thresholds(weights_file(checkpoint), meta)


def shards_table(shard_dir: str, checkpoints: Sequence[Path], metas: Sequence[dict],
                 num_classes: int) -> ClassTable:
    """The class table of the shards (their manifest), checked against the model: as many
    outputs as the table needs, and the classes it was trained on when it stored them."""
    from unetdist.data.manifest import class_table, read_manifest
    from unetdist.eval.classes_io import check_fits, check_same_classes, stored_table
    from unetdist.runfolder import weights_file

    table = class_table(read_manifest(shard_dir))
    check_fits(table, num_classes, f"the classes of {shard_dir}")
    if not table.is_binary:
        for ckpt, meta in zip(checkpoints, metas):
            wf = weights_file(ckpt)
            check_same_classes(stored_table(wf, meta), table, str(wf))
    return table


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
    table = shards_table(shard_dir, resolved, metas, cfg.model.num_classes)  # before any work
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
                                chosen=None if not table.is_binary else
                                _chosen(cfg.eval, resolved[0], metas[0]), table=table,
                                stored_labels=_stored_labels(table, resolved[0], metas[0]))
    acc.end_training()
    return Evaluation(result, out_dir)
