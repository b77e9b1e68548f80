"""What `unetdist evaluate` writes, and where: the output folder, predictions, tables, plots.

The default folder is `eval-<data folder name>-<split>/` beside the checkpoint's run folder, so
scoring one model on several datasets leaves one folder each. A folder that already holds the
results of other data (manifest hash) or another checkpoint is refused unless `--overwrite`;
then its stale predictions and plots are removed first, so two datasets never mix.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np

from unetdist.atomic import inside, write_atomic
from unetdist.config import EvalConfig
from unetdist.data.codec import encode_png
from unetdist.errors import UserError
from unetdist.eval import plots
from unetdist.eval.metrics import COUNT_KEYS, MetricState, pr_from_histograms, roc_from_histograms

REGION_NOTES = {
    "fov": "inside the field-of-view mask (the standard DRIVE protocol)",
    "image": "whole image, every pixel; predictions outside the FOV are set to background",
    "second_observer": "second manual annotation scored against the first, inside the FOV "
                       "(a human reference for the model's FOV metrics)",
    "topology": "inside the FOV: clDice from skeletons summed over images, beta0/beta1 errors "
                "|b(pred) - b(label)| and fragments (b0 of the prediction) as means per image",
    "f1_threshold": "the threshold maximising FOV F1 on this split (optimistic on a test split: "
                    "eval.threshold=auto chooses it on the validation split instead)",
    "at_threshold": "FOV and whole-image metrics at the threshold eval.threshold=auto chose on "
                    "the validation split (from the score histograms)",
    "classes": "multi-class: inside the FOV, pixels at the ignore index excluded; per class "
               "the one-vs-rest counts of the argmax prediction; means over the classes present "
               "in truth or prediction (mean_over); confusion rows = truth, columns = prediction",
    "labels": "multi-label: inside the FOV, each label scored as its own binary mask at its "
              "threshold (label_thresholds); means over the labels present in truth or "
              "prediction (mean_over)",
    "av": "artery/vein call on the pixels that are artery or vein in both truth and prediction "
          "(crossings excluded, artery positive); vessel = any non-background class, vessel_f1 "
          "its Dice (comparable with a binary vessel model's FOV dice)",
}
PREDICTION_NOTE = ("argmax of the class probabilities (eval.threshold applies to binary and "
                   "multi-label models only)")


def write_prediction_pngs(out_dir: Path, key: str, prob: np.ndarray, threshold: float,
                          size: tuple[int, int] | None = None) -> np.ndarray:
    """predictions/<key>.png (0/255) and <key>_prob.png (8-bit) at `size` (H, W).

    Returns the binary prediction at that size.
    """
    import cv2


    if size is not None and tuple(prob.shape) != tuple(size):
        prob = cv2.resize(prob, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    binary = prob >= threshold
    write_atomic(inside(out_dir, f"{key}.png"), encode_png(binary.astype(np.uint8) * 255))
    write_atomic(inside(out_dir, f"{key}_prob.png"), prob_png(prob))
    return binary


def prob_png(prob: np.ndarray) -> bytes:
    """A probability map (H, W) in [0, 1] as an 8-bit gray PNG (x 255, rounded)."""
    return encode_png(np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8))


def _csv_row(row: dict) -> dict:
    flat = {"key": row["key"], "height": row["height"], "width": row["width"],
            "scale": row.get("scale", 1.0)}
    for k in COUNT_KEYS:
        flat[f"fov_{k}"] = row["counts"][k]
    for k in ("dice", "iou_vessel", "iou_background", "miou", "precision", "recall",
              "specificity", "accuracy", "mcc", "auc_roc", "auc_pr"):
        flat[f"fov_{k}"] = row[k]
    for k in COUNT_KEYS:
        flat[f"image_{k}"] = row["image_counts"][k]
    flat["image_dice"] = row["image_dice"]
    flat["second_observer_fov_dice"] = row.get("second_observer_dice")
    # clDice, Tprec, Tsens, beta0/beta1 of prediction and label and their errors (beta0_pred:
    # the prediction's fragments), inside the FOV at eval.threshold
    flat.update(row.get("topology") or {})
    flat["seconds"] = row.get("seconds")
    return flat


def write_per_image_csv(rows: list[dict], path: Path) -> None:
    write_csv([_csv_row(r) for r in rows], path)


def write_csv(flat: list[dict], path: Path) -> None:
    """FLAT rows (one dict of scalars each, the first one's keys as the header) as CSV."""
    buf = io.StringIO()
    fields = list(flat[0]) if flat else ["key"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in flat:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    write_atomic(path, buf.getvalue().encode())


def write_metrics_json(result: dict, cfg: EvalConfig, path: Path, info: dict | None) -> None:
    """metrics.json: `info` (data, manifest hash, checkpoint, step, ...), the settings, the
    region notes and the results, seconds per image included."""
    doc = {"info": info or {},
           "settings": {k: getattr(cfg, k) for k in ("threshold", "tile", "overlap", "tta",
                                                    "auc_bins", "scale", "ref_fov_diameter")},
           **({"prediction": PREDICTION_NOTE} if result.get("mode") == "multiclass" else {}),
           "regions": {k: v for k, v in REGION_NOTES.items() if k in result},
           **{k: v for k, v in result.items() if k != "per_image"}}
    write_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())


def write_plots(result: dict, state: MetricState, plot_dir: Path) -> None:
    fov = result["fov"]
    plots.plot_class_bars(fov, plot_dir / "class_metrics.png",
                          f"{result['num_images']} images, inside FOV (mIoU {fov['miou']:.3f})")
    plots.plot_confusion(fov["counts"], plot_dir / "confusion_fov.png",
                         "confusion matrix, inside FOV")
    plots.plot_confusion(result["image"]["counts"], plot_dir / "confusion_image.png",
                         "confusion matrix, whole image")
    obs = result.get("second_observer", {}).get("fov")
    roc = roc_from_histograms(state.hist("fov_pos"), state.hist("fov_neg"))
    if roc is not None:
        ref = (1 - obs["specificity"], obs["recall"]) if obs else None
        plots.plot_roc(*roc, fov["auc_roc"], plot_dir / "roc_fov.png", ref, "ROC, inside FOV")
    pr = pr_from_histograms(state.hist("fov_pos"), state.hist("fov_neg"))
    if pr is not None:
        ref = (obs["recall"], obs["precision"]) if obs else None
        plots.plot_pr(*pr, fov["auc_pr"], plot_dir / "pr_fov.png", ref,
                      "precision-recall, inside FOV")


class OverlayCache:
    """Keeps the inputs of this rank's first n sample ids (candidates for the overlays)."""

    def __init__(self, n: int) -> None:
        self.n, self.items = n, {}

    def offer(self, key: str, sample: dict, pred: np.ndarray) -> None:
        if self.n == 0:
            return
        self.items[key] = (sample["rgb"], sample["label"], sample["fov"], pred)
        if len(self.items) > self.n:
            del self.items[max(self.items)]

    def write(self, keys: list[str], plot_dir: Path) -> None:
        import cv2


        for key in keys:
            if key not in self.items:
                continue
            rgb, label, fov, pred = self.items[key]
            label = label.reshape(label.shape[-2:]).cpu().numpy() > 0.5
            fov = fov.reshape(fov.shape[-2:]).cpu().numpy() > 0.5
            if rgb.shape[:2] != label.shape:  # metrics were computed at a resized resolution
                rgb = cv2.resize(rgb, label.shape[::-1], interpolation=cv2.INTER_AREA)
            plots.plot_overlay(rgb, label, pred, inside(plot_dir, f"overlay_{key}.png"), fov,
                               f"{key}: TP / FP / FN")


def default_out_dir(checkpoint: Path, data: str | Path, split: str) -> Path:
    """eval-<data>-<split>/ beside a resolved checkpoint: RUN/best -> RUN/eval-<data>-<split>;
    RUN/checkpoints/step-N -> RUN/eval-<data>-<split>-step-N (where `report` finds both)."""
    p = Path(checkpoint).resolve()
    name = f"eval-{re.sub(r'[^A-Za-z0-9_.-]+', '_', Path(data).resolve().name)}-{split}"
    if p.parent.name == "checkpoints":
        return inside(p.parent.parent, f"{name}-{p.name}")
    return inside(p.parent, name)


def _earlier_info(out_dir: Path) -> dict | None:
    try:
        info = json.loads((out_dir / "metrics.json").read_text()).get("info")
    except (OSError, ValueError, AttributeError):
        return None
    return info if isinstance(info, dict) else None


def check_out_dir(out_dir: Path, info: dict, overwrite: bool) -> bool:
    """Refuse OUT_DIR when it holds another evaluation's results (other data or another
    checkpoint) unless OVERWRITE; True when such results are there to be cleared first."""
    old = _earlier_info(out_dir)
    if old is None:
        return False
    if old.get("manifest_hash", info["manifest_hash"]) != info["manifest_hash"] or \
            (not old.get("manifest_hash") and old.get("data") not in (None, info["data"])):
        what = f"data {old.get('data')}"
    elif old.get("checkpoint") not in (None, info["checkpoint"]):
        what = f"checkpoint {old.get('checkpoint')}"
    else:
        return False
    if not overwrite:
        raise UserError(f"{out_dir} holds the results of {what}, not of this evaluation; "
                        "choose another --out, or pass --overwrite to replace them")
    return True


def clear_results(out_dir: Path) -> None:
    """Remove an earlier evaluation's files (predictions, plots, tables) from OUT_DIR."""
    for name in ("predictions", "plots"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in ("metrics.json", "per_image.csv"):
        (out_dir / name).unlink(missing_ok=True)
