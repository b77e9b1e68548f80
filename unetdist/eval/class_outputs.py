"""A multi-class model's files: colour-coded predictions, per-class probability maps, overlays,
metrics.json, per_image.csv and plots (`evaluate`), and the same prediction files (`predict`).

Per image `<id>` (sample id, or input file stem for `predict`):
- `<id>.png`: the predicted class of each pixel (argmax) in the class table's colours (RGB);
- `<id>.<class>.png`: one 8-bit gray map per class, its probability x 255 (class names are
  letters, digits, _ and -, ids have no dot, so the name always splits back into id and class);
- `predict` also writes `<id>.overlay.png`: the predicted non-background classes in their
  colours over a gray copy of the image; `evaluate` draws truth-vs-prediction overlay figures in
  plots/overlay_<id>.png for the first eval.num_overlays ids instead, as for binary models.
All at the input's original size: probabilities are resized (linear), the class map is the argmax
of the resized probabilities, so no label is ever interpolated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unetdist.atomic import inside, write_atomic
from unetdist.config import EvalConfig
from unetdist.data.classes import ClassTable
from unetdist.data.codec import encode_png
from unetdist.eval import outputs, plots
from unetdist.eval.metrics import roc_from_histograms
from unetdist.eval.multiclass import ClassMetricState


def resize_probs(prob: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(K, H, W) probabilities at SIZE (H, W), linearly interpolated per class."""
    import cv2

    if size is None or tuple(prob.shape[-2:]) == tuple(size):
        return prob
    # cv2 takes (H, W, K); one call per class keeps any K (cv2's channel limit is 512)
    return np.stack([cv2.resize(np.ascontiguousarray(p), (size[1], size[0]),
                                interpolation=cv2.INTER_LINEAR) for p in prob])


def prediction_names(key: str, table: ClassTable, overlay: bool = False) -> list[str]:
    """The file names written for KEY (see the module docstring)."""
    return [f"{key}.png", *(f"{key}.{n}.png" for n in table.names),
            *([f"{key}.overlay.png"] if overlay else [])]


def write_class_pngs(out_dir: Path, key: str, prob: np.ndarray, table: ClassTable,
                     size: tuple[int, int] | None = None, rgb: np.ndarray | None = None,
                     fov: np.ndarray | None = None) -> np.ndarray:
    """`<key>.png` (colours), `<key>.<class>.png` (probabilities) and, given RGB (the image at
    SIZE), `<key>.overlay.png`. Returns the predicted class map (uint8) at SIZE."""
    prob = resize_probs(prob, size)
    pred = prob.argmax(0).astype(np.uint8)
    for name, p in zip(table.names, prob):
        write_atomic(inside(out_dir, f"{key}.{name}.png"), outputs.prob_png(p))
    write_colour_pngs(out_dir, key, pred, table, rgb, fov)
    return pred


def write_colour_pngs(out_dir: Path, key: str, pred: np.ndarray, table: ClassTable,
                      rgb: np.ndarray | None, fov: np.ndarray | None) -> None:
    """`<key>.png`: the predicted map PRED in the table's colours; given RGB, `<key>.overlay.png`
    (its non-zero pixels over a gray copy of the image)."""
    colour = table.colourize(pred)
    write_atomic(inside(out_dir, f"{key}.png"), encode_png(colour))
    if rgb is not None:
        over = plots.class_overlay_image(rgb, colour, pred != 0, fov)
        write_atomic(inside(out_dir, f"{key}.overlay.png"), encode_png(over))


class ClassOverlayCache(outputs.OverlayCache):
    """The binary cache's choice of images, drawn in the table's colours."""

    def __init__(self, n: int, table: ClassTable) -> None:
        super().__init__(n)
        self.table = table

    def write(self, keys: list[str], plot_dir: Path) -> None:
        import cv2

        t = self.table
        legend = [(e.name, e.colour) for e in t.entries[1:]]
        legend += [(t.ignore.name, t.ignore.colour)] if t.ignore is not None else []
        for key in keys:
            if key not in self.items:
                continue
            rgb, label, fov, pred = self.items[key]
            label = label.reshape(label.shape[-2:]).cpu().numpy().astype(np.uint8)
            fov = fov.reshape(fov.shape[-2:]).cpu().numpy() > 0.5
            if rgb.shape[:2] != label.shape:
                rgb = cv2.resize(rgb, label.shape[::-1], interpolation=cv2.INTER_AREA)
            truth = plots.class_overlay_image(rgb, t.colourize(label), label != 0, fov)
            guess = plots.class_overlay_image(rgb, t.colourize(pred), pred != 0, fov)
            plots.plot_class_overlay(truth, guess, legend, inside(plot_dir, f"overlay_{key}.png"),
                                     f"{key}: classes in the table's colours")


def write_class_plots(result: dict, state: ClassMetricState, table: ClassTable,
                      plot_dir: Path) -> None:
    """confusion_classes.png, class_metrics.png and roc_classes.png (one-vs-rest ROC)."""
    c = result["classes"]
    where = f"{result['num_images']} images, inside FOV, ignore excluded"
    plots.plot_class_confusion(c["confusion"], c["class_names"],
                               plot_dir / "confusion_classes.png", f"confusion matrix, {where}")
    plots.plot_per_class_bars(c["per_class"], table.colours, plot_dir / "class_metrics.png",
                              f"{where} (mIoU {c['mean_iou']:.3f})")
    curves = {}
    for i, name in enumerate(c["class_names"]):
        roc = roc_from_histograms(state.hists[0, i].numpy(), state.hists[1, i].numpy())
        if roc is not None and c["per_class"][name]["auc_roc"] is not None:
            curves[name] = (*roc, c["per_class"][name]["auc_roc"])
    if curves:
        colours = [table.colours[c["class_names"].index(n)] for n in curves]
        plots.plot_class_roc(curves, np.array(colours), plot_dir / "roc_classes.png",
                             f"one-vs-rest ROC, {where}")


def write_class_files(result: dict, state: ClassMetricState, cfg: EvalConfig, out_dir: Path,
                      info: dict | None, table: ClassTable) -> None:
    """Rank 0's files: metrics.json, per_image.csv, plots/."""
    outputs.write_metrics_json(result, cfg, out_dir / "metrics.json", info)
    outputs.write_csv(result["per_image"], out_dir / "per_image.csv")  # rows already flat
    write_class_plots(result, state, table, out_dir / "plots")
