"""A multi-label model's files: per-label masks and probability maps, a colour composite,
overlays, metrics.json, per_image.csv and plots (`evaluate`), and the prediction files
(`predict`).

Per image `<id>` (sample id, or input file stem for `predict`):
- `<id>.png`: the labels found at each pixel in the table's colours (where labels overlap, the
  later label of the table shows: cup over disc, vein over artery);
- `<id>.<label>.png`: the label's mask at its threshold, 0/255;
- `<id>.<label>.prob.png`: its probability x 255 (ids and label names hold no dot, so every
  name splits back into id, label and kind);
- `predict` also writes `<id>.overlay.png`; `evaluate` draws truth-vs-prediction figures in
  plots/overlay_<id>.png for the first eval.num_overlays ids, as for the other models.
All at the input's original size: probabilities are resized (linear), masks thresholded after.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unetdist.atomic import inside, write_atomic
from unetdist.config import EvalConfig
from unetdist.data.classes import ClassTable, to_bitmask
from unetdist.data.codec import encode_png
from unetdist.eval import outputs, plots
from unetdist.eval.class_outputs import resize_probs, write_colour_pngs
from unetdist.eval.metrics import roc_from_histograms
from unetdist.eval.multiclass import MultiLabelMetricState


def label_prediction_names(key: str, table: ClassTable, overlay: bool = False) -> list[str]:
    """The file names written for KEY (see the module docstring)."""
    return [f"{key}.png", *(f"{key}.{n}.png" for n in table.label_names),
            *(f"{key}.{n}.prob.png" for n in table.label_names),
            *([f"{key}.overlay.png"] if overlay else [])]


def write_label_pngs(out_dir: Path, key: str, prob: np.ndarray, thresholds: list[float],
                     table: ClassTable, size: tuple[int, int] | None = None,
                     rgb: np.ndarray | None = None, fov: np.ndarray | None = None
                     ) -> np.ndarray:
    """The files of KEY (module docstring) from PROB (C, H, W); `<key>.overlay.png` given RGB
    (the image at SIZE). Returns the predicted bit mask (uint8) at SIZE."""
    prob = resize_probs(prob, size)
    masks = prob >= np.asarray(thresholds, dtype=np.float32).reshape(-1, 1, 1)
    bits = to_bitmask(masks)
    for name, m, p in zip(table.label_names, masks, prob):
        write_atomic(inside(out_dir, f"{key}.{name}.png"), encode_png(m.astype(np.uint8) * 255))
        write_atomic(inside(out_dir, f"{key}.{name}.prob.png"), outputs.prob_png(p))
    write_colour_pngs(out_dir, key, bits, table, rgb, fov)
    return bits


def write_label_plots(result: dict, state: MultiLabelMetricState, table: ClassTable,
                      plot_dir: Path) -> None:
    """label_metrics.png (Dice, IoU, sensitivity, precision per label) and roc_labels.png."""
    lab = result["labels"]["per_label"]
    where = f"{result['num_images']} images, inside FOV"
    colours = table.colours[1:]
    bars = {n: {"dice": r["dice"], "iou": r["iou_vessel"], "sensitivity": r["recall"],
                "precision": r["precision"]} for n, r in lab.items()}
    plots.plot_per_class_bars(bars, colours, plot_dir / "label_metrics.png",
                              f"{where}, each label at its threshold")
    curves, shown = {}, []
    for i, name in enumerate(table.label_names):
        roc = roc_from_histograms(state.hists[i, 0].numpy(), state.hists[i, 1].numpy())
        if roc is not None and lab[name]["auc_roc"] is not None:
            curves[name] = (*roc, lab[name]["auc_roc"])
            shown.append(colours[i])
    if curves:
        plots.plot_class_roc(curves, np.array(shown), plot_dir / "roc_labels.png",
                             f"per-label ROC, {where}")


def write_label_files(result: dict, state: MultiLabelMetricState, cfg: EvalConfig,
                      out_dir: Path, info: dict | None, table: ClassTable) -> None:
    """Rank 0's files: metrics.json, per_image.csv, plots/."""
    outputs.write_metrics_json(result, cfg, out_dir / "metrics.json", info)
    outputs.write_csv(result["per_image"], out_dir / "per_image.csv")
    write_label_plots(result, state, table, out_dir / "plots")
