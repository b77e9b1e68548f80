"""Matplotlib figures (Agg backend, no display): result bars, ROC/PR, confusion, overlays, curves;
the K-class forms of the bars, ROC curves, confusion matrix and overlays for multi-class models.

Every figure is written to a temporary name and renamed, so a crash never leaves half a PNG.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unetdist.atomic import atomic_file

# Overlay colours (RGB): true positives, false positives, false negatives.
TP_COLOR, FP_COLOR, FN_COLOR = (0, 200, 0), (230, 30, 30), (40, 120, 255)


@functools.cache
def _pyplot():
    """pyplot on the file-only Agg backend, imported at the first figure: importing it at module
    load cost every training process ~0.4 s of start-up for plots only evaluation draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return path


def _label(ax, bars, fmt: str = "{:.3f}") -> None:
    for b in bars:
        ax.annotate(fmt.format(b.get_height()), (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8)


def plot_class_bars(region: dict, out_png: str | Path, title: str = "") -> Path:
    """Per-class IoU / recall / precision bars (background, vessel) with the mIoU line."""
    classes = ("background", "vessel")
    fig, axes = _pyplot().subplots(1, 3, figsize=(11, 3.6), sharey=True)
    for ax, metric in zip(axes, ("iou", "recall", "precision")):
        vals = [region["per_class"][c][metric] for c in classes]
        _label(ax, ax.bar(classes, vals, color=["#999999", "#c0392b"]))
        ax.set_title(metric if metric != "iou" else "IoU")
        ax.set_ylim(0, 1.08)
        if metric == "iou":
            ax.axhline(region["miou"], color="k", ls="--", lw=1)
            ax.text(1.45, region["miou"], f"mIoU {region['miou']:.3f}", ha="right",
                    va="bottom", fontsize=8)
    fig.suptitle(title or f"per-class results (mIoU {region['miou']:.3f})")
    return save_figure(fig, out_png)


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, out_png: str | Path,
             reference: tuple[float, float] | None = None, title: str = "ROC") -> Path:
    """ROC curve; `reference` = (fpr, tpr) of the second observer, drawn as a point."""
    fig, ax = _pyplot().subplots(figsize=(4.6, 4.4))
    ax.plot(fpr, tpr, color="#c0392b", label=f"model (AUC {auc:.4f})")
    ax.plot([0, 1], [0, 1], color="#bbbbbb", ls=":", lw=1)
    if reference is not None:
        ax.plot(*reference, "k^", label="2nd observer")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1),
           ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, out_png)


def plot_pr(recall: np.ndarray, precision: np.ndarray, ap: float, out_png: str | Path,
            reference: tuple[float, float] | None = None, title: str = "precision-recall"
            ) -> Path:
    """Step-wise PR curve (as AP sums it); `reference` = (recall, precision) of observer 2."""
    fig, ax = _pyplot().subplots(figsize=(4.6, 4.4))
    ax.step(np.concatenate([[0.0], recall]), np.concatenate([[precision[0]], precision]),
            where="pre", color="#c0392b", label=f"model (AP {ap:.4f})")
    if reference is not None:
        ax.plot(*reference, "k^", label="2nd observer")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, out_png)


def plot_confusion(counts: dict, out_png: str | Path, title: str = "confusion matrix") -> Path:
    """2x2 matrix (rows: truth, columns: prediction) with counts and row fractions."""
    m = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig, ax = _pyplot().subplots(figsize=(4.4, 3.9))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{int(m[i, j]):,}\n{frac[i, j]:.3f}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black", fontsize=9)
    names = ["background", "vessel"]
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=names, yticklabels=names,
           xlabel="predicted", ylabel="true", title=title)
    return save_figure(fig, out_png)


def overlay_image(rgb: np.ndarray, label: np.ndarray, pred: np.ndarray,
                  fov: np.ndarray | None = None, alpha: float = 0.75) -> np.ndarray:
    """RGB uint8 with TP / FP / FN pixels painted in three colours (outside the FOV dimmed)."""
    # a gray base keeps the three colours apart from the fundus' own reds and greens
    out = np.repeat(rgb.astype(np.float32).mean(axis=2, keepdims=True), 3, axis=2)
    if fov is not None:
        out[~fov.astype(bool)] *= 0.4
    lab, pr = label.astype(bool), pred.astype(bool)
    for mask, color in ((lab & pr, TP_COLOR), (~lab & pr, FP_COLOR), (lab & ~pr, FN_COLOR)):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.array(color, np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def plot_overlay(rgb: np.ndarray, label: np.ndarray, pred: np.ndarray, out_png: str | Path,
                 fov: np.ndarray | None = None, title: str = "") -> Path:
    from matplotlib.patches import Patch

    h, w = label.shape
    fig, ax = _pyplot().subplots(figsize=(min(12.0, 2 + 6 * w / max(h, w)), 6.3))
    ax.imshow(overlay_image(rgb, label, pred, fov))
    ax.set_axis_off()
    ax.set_title(title)
    handles = [Patch(color=np.array(c) / 255, label=n) for c, n in
               ((TP_COLOR, "true positive"), (FP_COLOR, "false positive"),
                (FN_COLOR, "false negative"))]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=3,
              fontsize=8, frameon=False)
    return save_figure(fig, out_png)


def plot_class_confusion(confusion: Sequence[Sequence[int]], names: Sequence[str],
                         out_png: str | Path, title: str = "confusion matrix") -> Path:
    """K×K matrix (rows: truth, columns: prediction) with counts and row fractions."""
    m = np.asarray(confusion, dtype=np.float64)
    k = m.shape[0]
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = 2.2 + 1.0 * k
    fig, ax = _pyplot().subplots(figsize=(side + 0.6, side))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(m[i, j]):,}\n{frac[i, j]:.3f}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black", fontsize=8)
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_yticklabels(names)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    return save_figure(fig, out_png)


def plot_per_class_bars(per_class: dict, colours: np.ndarray, out_png: str | Path,
                        title: str = "") -> Path:
    """Dice / IoU / sensitivity / precision of each class, bars in the class's colour."""
    names = list(per_class)
    # a black or white class colour would vanish against the axes: edge every bar
    face = [tuple(np.asarray(c, np.float64) / 255) for c in colours]
    metrics = ("dice", "iou", "sensitivity", "precision")
    fig, axes = _pyplot().subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), sharey=True)
    for ax, metric in zip(axes, metrics):
        vals = [per_class[n][metric] for n in names]
        _label(ax, ax.bar(names, vals, color=face, edgecolor="#333333", linewidth=0.8))
        ax.set_title(metric if metric != "iou" else "IoU")
        ax.set_ylim(0, 1.1)
        ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle(title or "per-class results")
    return save_figure(fig, out_png)


def plot_class_roc(curves: dict, colours: np.ndarray, out_png: str | Path,
                   title: str = "one-vs-rest ROC") -> Path:
    """One ROC curve per class; CURVES: name -> (fpr, tpr, auc) (classes without both positive
    and negative pixels left out by the caller)."""
    fig, ax = _pyplot().subplots(figsize=(4.8, 4.4))
    for (name, (fpr, tpr, auc)), c in zip(curves.items(), colours):
        colour = np.asarray(c, np.float64) / 255
        if colour.max() > 0.92 or colour.max() < 0.08:  # white or black on white axes
            colour = np.array([0.45, 0.45, 0.45])
        ax.plot(fpr, tpr, color=colour, label=f"{name} (AUC {auc:.4f})")
    ax.plot([0, 1], [0, 1], color="#bbbbbb", ls=":", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1),
           ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, out_png)


def class_overlay_image(rgb: np.ndarray, colour_map: np.ndarray, paint: np.ndarray,
                        fov: np.ndarray | None = None, alpha: float = 0.75) -> np.ndarray:
    """RGB uint8: COLOUR_MAP (H, W, 3) blended over a gray copy of RGB where PAINT (the
    non-background pixels), outside the FOV dimmed."""
    out = np.repeat(rgb.astype(np.float32).mean(axis=2, keepdims=True), 3, axis=2)
    if fov is not None:
        out[~fov.astype(bool)] *= 0.4
    paint = paint.astype(bool)
    out[paint] = (1 - alpha) * out[paint] + alpha * colour_map[paint].astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def plot_class_overlay(truth: np.ndarray, pred: np.ndarray, legend: Sequence[tuple],
                       out_png: str | Path, title: str = "") -> Path:
    """Truth and prediction overlays (RGB uint8 each) side by side; LEGEND: (name, RGB)."""
    from matplotlib.patches import Patch

    h, w = truth.shape[:2]
    fig, axes = _pyplot().subplots(1, 2, figsize=(min(16.0, 2 + 12 * w / max(h, w)), 6.3))
    for ax, img, name in zip(axes, (truth, pred), ("truth", "prediction")):
        ax.imshow(img)
        ax.set_axis_off()
        ax.set_title(name, fontsize=10)
    handles = [Patch(facecolor=np.array(c) / 255, edgecolor="#333333", label=n)
               for n, c in legend]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    fig.suptitle(title)
    return save_figure(fig, out_png)


def _series(records: Sequence[dict], split: str, key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in records
           if r.get("split") == split and isinstance(r.get(key), (int, float)) and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


VAL_METRICS = ("dice", "miou", "auc_roc", "auc_pr", "recall", "precision")


def plot_training_curves(records: list[dict], out_png: Path) -> Path:
    """Loss (train, val), learning rate and validation metrics against the step.

    `records` are metrics.jsonl lines: {"step", "split": "train"|"val", "loss", "lr", ...}.
    Panels without data are left out, so early calls (no validation yet) still work.
    """
    panels = []
    loss = [(s, *_series(records, s, "loss")) for s in ("train", "val")]
    if any(xs for _, xs, _ in loss):
        panels.append(("loss", [(f"{s} loss", xs, ys) for s, xs, ys in loss if xs]))
    lr = _series(records, "train", "lr")
    if lr[0]:
        panels.append(("learning rate", [("lr", *lr)]))
    val = [(m, *_series(records, "val", m)) for m in VAL_METRICS]
    if any(xs for _, xs, _ in val):
        panels.append(("validation", [(m, xs, ys) for m, xs, ys in val if xs]))
    fig, axes = _pyplot().subplots(1, max(1, len(panels)), figsize=(4.6 * max(1, len(panels)), 3.6),
                             squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels):
        for name, xs, ys in lines:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=name)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if not panels:
        axes[0][0].text(0.5, 0.5, "no records yet", ha="center", va="center")
    return save_figure(fig, out_png)
