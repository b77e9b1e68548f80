"""Validation during training: score the val split on every rank, log it, keep best/.

The metric that picks best/ is the FOV Dice for a binary model, the mean foreground Dice
(classes other than background, ignore excluded) for a multi-class one and the mean label Dice
for a multi-label one: all land under "dice" in the record, so selection, logging and the report
read one key.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from unetdist.config import to_dict, to_yaml
from unetdist.data.classes import to_bitmask
from unetdist.data.pipeline import eval_samples
from unetdist.distributed import broadcast_buffers, sum_across
from unetdist.eval.classes_io import META_KEY as CLASSES_KEY
from unetdist.eval.classes_io import classes_json
from unetdist.eval.evaluate import evaluate_split
from unetdist.eval.inference import sliding_window_predict
from unetdist.eval.plots import plot_training_curves
from unetdist.eval.threshold import LABELS_KEY, fixed_threshold
from unetdist.log import say
from unetdist.track.jsonl import METRICS_FILE, read_records
from unetdist.train import checkpoint as ckpt
from unetdist.train.preempt import PreemptionFlag
from unetdist.train.setup import Run


def preempt_agreed(run: Run, flag: PreemptionFlag) -> bool:
    """Whether some rank has a preemption signal (one small collective, all ranks call it)."""
    return sum_across([float(flag.requested)], run.acc.device)[0] > 0


def _until_signal(samples, flag: PreemptionFlag):
    for s in samples:
        if flag.requested:  # stop scoring; the ranks agree once the all-reduce is done
            return
        yield s


def validate(run: Run, flag: PreemptionFlag | None = None) -> dict | None:
    """Full-image validation on every rank's share; best model by "dice" (module docstring).

    Polls the preemption flag before every image: a signal during validation (long with TTA)
    cuts it short on that rank, the ranks agree after the metric all-reduce, and None (no
    metrics, no best/) tells the loop to checkpoint and stop within the signal's lead time.
    With train.ema_decay the EMA weights are validated too (split "val_ema"); best/ takes
    whichever scored higher (the raw weights on a tie) and its metrics.json says which.
    """

    acc, st = run.acc, run.state
    t0 = time.perf_counter()
    metrics = score(run, acc.unwrap_model(run.model), "val", flag)
    if metrics is None:
        return None
    run.tracker.log(metrics, st.step)
    log_val_masks(run)
    candidates = [("raw", None, metrics)]
    if run.ema is not None:
        ema_metrics = score(run, run.ema.module, "val_ema", flag)
        if ema_metrics is None:
            return None
        run.tracker.log(ema_metrics, st.step)
        candidates.append(("ema", run.ema.module, ema_metrics))
    which, module, best = max(candidates, key=lambda c: float(c[2]["dice"]))  # first on ties
    dice = float(best["dice"])
    improved = st.best_dice is None or dice > st.best_dice
    if improved:
        st.best_dice, st.best_step = dice, st.step
        export_best(run, {**best, "split": "val", "weights": which,
                          **chosen_threshold_entry(run.cfg.eval, best)}, module)
    run.plot_stale = True
    refresh_plot(run, final=False)
    auc = best.get("auc_roc")
    say(f"step {st.step} val dice {dice:.3f}{' (best)' if improved else ''}"
        + (f" auc {auc:.3f}" if auc is not None else "")
        + (" (EMA weights)" if which == "ema" else "")
        + f" · {time.perf_counter() - t0:.0f} s")
    return metrics


PLOT_EVERY_S = 60.0


def refresh_plot(run: Run, *, final: bool) -> None:
    """plots/loss.png from metrics.jsonl (rank 0): after a validation at most once a minute,
    and at the end of the run when a validation came since. A draw costs rank 0 ~0.3 s of
    matplotlib while the other ranks wait at the next collective; frequent validations of a
    short run drew after each one, and a person reading the plot needs no more than this."""
    if not (run.acc.is_main_process and run.plot_stale):
        return
    if not final and time.monotonic() - run.plotted_at < PLOT_EVERY_S:
        return
    plot_training_curves(read_records(run.run_dir / METRICS_FILE),
                         run.run_dir / "plots" / "loss.png")
    run.plotted_at, run.plot_stale = time.monotonic(), False


def score(run: Run, model: torch.nn.Module, split: str,
          flag: PreemptionFlag | None) -> dict | None:
    """Validation metrics of `model` (all ranks, each its share); None when preempted."""

    cfg, acc = run.cfg, run.acc
    broadcast_buffers(model)  # one copy of the BN statistics
    samples = eval_samples(cfg.data, run.shard_dir, cfg.eval.split, rank=acc.process_index,
                           world_size=acc.num_processes)
    if flag is not None:
        samples = _until_signal(samples, flag)
    res = evaluate_split(model, samples, cfg.eval, accelerator=acc, progress=False,
                         table=run.table)  # the uncompiled module: no recompiles for eval
    if flag is not None and preempt_agreed(run, flag):
        return None
    if res.get("mode") == "multiclass":
        return {"split": split, "num_images": res["num_images"], **class_record(res)}
    if res.get("mode") == "multilabel":
        return {"split": split, "num_images": res["num_images"], **label_record(res)}
    return {"split": split, "num_images": res["num_images"], **res["fov"],
            "f1_threshold": res["f1_threshold"]}


def class_record(res: dict) -> dict:
    """A multi-class evaluation as one flat metrics record: "dice" is the mean foreground Dice
    (what picks best/), then mIoU, pixel accuracy, each class's Dice and the A/V numbers."""
    c = res["classes"]
    out = {"dice": c["mean_dice_fg"], "miou": c["mean_iou"],
           "pixel_accuracy": c["pixel_accuracy"]}
    out.update({f"dice_{name}": v["dice"] for name, v in c["per_class"].items()})
    av = res.get("av") or {}
    out.update({f"av_{k}": av[k] for k in ("accuracy", "sensitivity", "specificity",
                                          "vessel_f1") if av.get(k) is not None})
    return out


def label_record(res: dict) -> dict:
    """A multi-label evaluation as one flat metrics record: "dice" is the mean label Dice
    (what picks best/), then the mean IoU, each label's Dice, and each label's F1-optimal
    threshold on this split (what eval.threshold=auto keeps)."""
    lab = res["labels"]
    out = {"dice": lab["mean_dice"], "miou": lab["mean_iou"]}
    out.update({f"dice_{name}": r["dice"] for name, r in lab["per_label"].items()})
    out["f1_thresholds"] = res["f1_thresholds"]
    return out


def chosen_threshold_entry(cfg, metrics: dict) -> dict:
    """eval.threshold=auto: best/metrics.json's `threshold`, the F1-optimal one on validation
    (a multi-label model: `label_thresholds`, one per label)."""
    if cfg.threshold == "auto" and metrics.get("f1_thresholds"):
        return {LABELS_KEY: {n: v["threshold"] for n, v in metrics["f1_thresholds"].items()}}
    best = metrics.get("f1_threshold")
    if cfg.threshold != "auto" or best is None:
        return {}
    return {"threshold": best["threshold"], "threshold_dice": best["dice"]}


def log_val_masks(run: Run) -> None:
    """Rank 0 renders a fixed set of validation images (first by key) for W&B's mask viewer;
    a multi-class model's masks are argmax maps with the table's class names."""
    n = run.cfg.track.wandb.log_images
    if not (run.acc.is_main_process and n > 0 and run.tracker.wants_masks):
        return
    from itertools import islice

    model = run.acc.unwrap_model(run.model)  # DDP's forward would sync with idle ranks
    classes = not run.table.is_binary and not run.table.is_multilabel
    labels = run.table.is_multilabel
    images = []
    for s in islice(eval_samples(run.cfg.data, run.shard_dir, run.cfg.eval.split, rank=0,
                                 world_size=1), n):
        prob = sliding_window_predict(model, s["image"].to(run.acc.device), run.cfg.eval,
                                      accelerator=run.acc, classes=classes,
                                      labels=labels)  # training precision
        pred = _val_mask(prob, run.table, run.cfg.eval)
        image = {"key": s["key"], "rgb": s["rgb"], "pred": pred.astype("uint8"),
                 "label": s["label"][0, 0].numpy().astype("uint8"),
                 "fov": s["fov"][0, 0].numpy().astype("uint8")}
        if not run.table.is_binary:
            image["class_labels"] = mask_labels(run.table)
        images.append(image)
    run.tracker.log_masks(images, run.state.step)


def _val_mask(prob: torch.Tensor, table, cfg) -> np.ndarray:
    """What W&B shows as the prediction: the argmax class, a multi-label bit mask (each label
    at eval.threshold), or the binary mask."""
    p = prob[0].float().cpu().numpy()
    if table.is_multilabel:
        return to_bitmask(p >= fixed_threshold(cfg))
    if not table.is_binary:
        return p.argmax(0)
    return p[0] >= fixed_threshold(cfg)


def mask_labels(table) -> dict[int, str]:
    """W&B's class_labels for a class-index mask: the table's names, ignore included (a bit
    mask: each value names the labels it holds, "artery+vein")."""
    if table.is_multilabel:
        names = table.label_names
        return {0: table.names[0], **{v: "+".join(n for c, n in enumerate(names) if v >> c & 1)
                                      for v in range(1, 1 << len(names))}}
    labels = dict(enumerate(table.names))
    if table.ignore_index is not None:
        labels[table.ignore_index] = table.ignore.name
    return labels


def export_best(run: Run, metrics: dict, module: torch.nn.Module | None = None) -> None:
    """best/ from the trained model, or from `module` (the EMA copy) when given."""
    state_dict = run.acc.get_state_dict(run.model) if module is None else module.state_dict()
    if run.acc.is_main_process:
        extra = {} if run.table.is_binary else {CLASSES_KEY: classes_json(run.table)}
        if LABELS_KEY in metrics:  # eval.threshold=auto's per-label choice travels with it
            extra[LABELS_KEY] = json.dumps(metrics[LABELS_KEY], sort_keys=True)
        path = ckpt.export_best(state_dict, to_dict(run.cfg), to_yaml(run.cfg), metrics,
                                run.state.step, run.run_dir, extra)
        run.tracker.log_model(path)
    run.acc.wait_for_everyone()
