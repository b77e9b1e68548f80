"""The report's evaluation sections: one per evaluation folder (eval-*/) of the run.

Each names what was evaluated (data, manifest hash, checkpoint, step) from its metrics.json,
then shows the metrics, settings, seconds per image, the figures and the per-image table
(per_image.csv). Older folders without that information still render, with "n/a". A multi-class
evaluation (metrics.json with a "classes" block) shows the per-class table, the means, the
confusion matrix, the A/V numbers when present, and evaluate's K-class figures; a multi-label
one (a "labels" block) the per-label table with each label's threshold, and the means.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from unetdist.track.report_html import esc as _esc
from unetdist.track.report_html import fig_bytes as _fig_bytes
from unetdist.track.report_html import figure as _figure
from unetdist.track.report_html import is_number as _number
from unetdist.track.report_html import kv_table as _kv_table
from unetdist.track.report_html import na as _na
from unetdist.track.report_html import section as _section
from unetdist.track.report_html import table as _table

METRIC_ROWS = ("dice", "iou_vessel", "iou_background", "miou", "precision", "recall",
               "specificity", "accuracy", "mcc", "auc_roc", "auc_pr")
REGIONS = (("fov", "inside FOV"), ("image", "whole image"))
# per_image.csv columns shown in the report, with their headings
PER_IMAGE = (("key", "image"), ("fov_dice", "dice"), ("fov_auc_roc", "AUC-ROC"),
             ("fov_recall", "recall"), ("fov_precision", "precision"),
             ("fov_specificity", "specificity"), ("second_observer_fov_dice", "2nd obs. dice"),
             ("seconds", "seconds"))


# multi-class: per-class columns of metrics.json's classes.per_class, with their headings
CLASS_COLS = (("dice", "Dice"), ("iou", "IoU"), ("sensitivity", "sensitivity"),
              ("specificity", "specificity"), ("precision", "precision"),
              ("auc_roc", "AUC-ROC"), ("support", "true pixels"), ("predicted", "predicted"))
CLASS_MEANS = (("pixel_accuracy", "pixel accuracy"), ("mean_iou", "mean IoU"),
               ("mean_iou_fg", "mean IoU without background"), ("mean_dice", "mean Dice"),
               ("mean_dice_fg", "mean Dice without background"))
AV_ROWS = (("accuracy", "A/V accuracy"), ("sensitivity", "A/V sensitivity (artery)"),
           ("specificity", "A/V specificity (vein)"), ("pixels", "pixels scored"),
           ("excluded_pixels", "vessel pixels excluded"), ("crossing_pixels", "crossing pixels"),
           ("vessel_f1", "vessel-union F1"))


# multi-label: per-label columns of metrics.json's labels.per_label
LABEL_COLS = (("dice", "Dice"), ("iou_vessel", "IoU"), ("recall", "sensitivity"),
              ("specificity", "specificity"), ("precision", "precision"),
              ("auc_roc", "AUC-ROC"), ("auc_pr", "AUC-PR"))


def load(path: Path) -> dict | None:
    """A JSON or YAML mapping, or None when missing or unreadable."""
    import yaml

    try:
        text = path.read_text()
        d = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return d if isinstance(d, dict) else None


def _class_bars_png(m: dict) -> bytes:
    """Per-class IoU / precision / recall, inside the FOV and on the whole image."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.5, 3.2))
    for i, (region, title) in enumerate(REGIONS):
        ax = fig.add_subplot(1, 2, i + 1)
        r = m.get(region) or {}
        c = r.get("counts") or {}
        npv = c["tn"] / (c["tn"] + c["fn"]) if c and c.get("tn", 0) + c.get("fn", 0) else None
        groups = {"vessel": (r.get("iou_vessel"), r.get("precision"), r.get("recall")),
                  "background": (r.get("iou_background"), npv, r.get("specificity"))}
        x = np.arange(3)
        for j, (cls, vals) in enumerate(groups.items()):
            ys = [v if _number(v) else 0.0 for v in vals]
            bars = ax.bar(x + (j - 0.5) * 0.38, ys, 0.38, label=cls,
                          color=("#c0392b", "#8a93a6")[j])
            ax.bar_label(bars, [f"{v:.3f}" if _number(v) else "n/a" for v in vals], fontsize=7)
        ax.set_xticks(x, ["IoU", "precision", "recall"])
        ax.set_ylim(0, 1.12)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _fig_bytes(fig)


def _eval_pngs(eval_dir: Path) -> dict[str, list[Path]]:
    """The evaluation's PNGs by kind, from their names (evaluate writes them to plots/).

    Only files that really are in the folder: a link out of it would put another file's
    pixels into a page that people share."""
    found: dict[str, list[Path]] = {k: [] for k in ("bars", "curves", "confusion", "overlays",
                                                    "other")}
    home = eval_dir.resolve()
    for p in sorted((eval_dir / "plots").rglob("*.png")) + sorted(eval_dir.glob("*.png")):
        if home not in p.resolve().parents:
            continue
        n = p.stem.lower()
        found["overlays" if "overlay" in n else "curves" if re.search(r"roc|(^|_)pr(_|$)", n)
              else "confusion" if "confusion" in n else "bars" if re.search(r"class|bar|label", n)
              else "other"].append(p)
    return found


def _figs(paths: list[Path], width: int | None = None) -> str:
    if not paths:
        return ""
    out = []
    for p in paths:
        try:
            out.append(_figure(p.read_bytes(), p.name, width))
        except OSError:
            out.append(_na(f"{p.name}: unreadable"))
    return '<div class="figs">' + "".join(out) + "</div>"


def _what(eval_dir: Path, m: dict) -> str:
    """Which data, checkpoint and step this evaluation scored (from metrics.json's info)."""
    info = m.get("info") if isinstance(m.get("info"), dict) else {}
    split = info.get("split") or eval_dir.name[len("eval-"):]
    ckpt = info.get("checkpoint")
    rows = [["data", info.get("data", "not recorded")], ["split", split],
            ["manifest hash", (info.get("manifest_hash") or "not recorded")[:16]],
            ["checkpoint", "; ".join(ckpt) if isinstance(ckpt, list) else ckpt or "not recorded"],
            ["step", info.get("step") if info.get("step") is not None else "not recorded"],
            ["images", m.get("num_images")],
            ["seconds per image", m.get("seconds_per_image", "not recorded")]]
    return _kv_table(rows)


def _per_image(eval_dir: Path) -> str:
    """per_image.csv as a table (the columns a reader compares images by)."""
    try:
        with open(eval_dir / "per_image.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return _na("not available (no per_image.csv)")
    if not rows:
        return _na("per_image.csv lists no images")
    per_image = PER_IMAGE
    if "fov_dice" not in rows[0] and "mean_iou" in rows[0]:  # a multi-class evaluation
        per_image = (("key", "image"), ("pixel_accuracy", "pixel acc."), ("mean_iou", "mIoU"),
                     *((k, f"Dice {k[len('dice_'):]}") for k in rows[0]
                       if k.startswith("dice_")),
                     ("av_accuracy", "A/V acc."), ("vessel_f1", "vessel F1"),
                     ("seconds", "seconds"))
    cols = [(k, t) for k, t in per_image if k in rows[0] and any(r[k] for r in rows)]

    def cell(k: str, v: str):
        try:
            return v if k == "key" else float(v)
        except ValueError:
            return None if v == "" else v

    return _table([t for _, t in cols], [[cell(k, r[k]) for k, _ in cols] for r in rows])


def _num(v):
    return v if _number(v) else None


def _class_metrics(m: dict) -> str:
    """A multi-class evaluation's tables: per class, the means, the confusion, A/V."""
    c = m["classes"]
    per = c.get("per_class") if isinstance(c.get("per_class"), dict) else {}
    rows = [[str(n)] + [_num(r.get(k)) if isinstance(r, dict) else None for k, _ in CLASS_COLS]
            for n, r in per.items()]
    parts = ["<h3>Per-class metrics (inside FOV, ignore excluded)</h3>",
             _table(["class"] + [t for _, t in CLASS_COLS], rows) if rows else _na()]
    parts.append(_table(["mean", "value"], [[t, _num(c.get(k))] for k, t in CLASS_MEANS]))
    conf, names = c.get("confusion"), [str(n) for n in per]
    if isinstance(conf, list) and len(conf) == len(names) and all(
            isinstance(r, list) and len(r) == len(names) for r in conf):
        parts.append("<h3>Confusion matrix (rows: truth, columns: prediction)</h3>" + _table(
            ["truth \\ prediction"] + names, [[n] + [_num(v) for v in r]
                                               for n, r in zip(names, conf)]))
    av = m.get("av")
    if isinstance(av, dict):
        parts.append("<h3>Artery / vein</h3>" + _table(
            ["metric", "value"], [[t, _num(av.get(k))] for k, t in AV_ROWS]))
    return "".join(parts)


def _label_metrics(m: dict) -> str:
    """A multi-label evaluation's tables: per label (with its threshold), the means."""
    lab = m["labels"]
    per = lab.get("per_label") if isinstance(lab.get("per_label"), dict) else {}
    thr = m.get("label_thresholds") if isinstance(m.get("label_thresholds"), dict) else {}
    rows = [[str(n)] + [_num(r.get(k)) if isinstance(r, dict) else None for k, _ in LABEL_COLS]
            + [_num(thr.get(n))] for n, r in per.items()]
    return "".join([
        "<h3>Per-label metrics (inside FOV, each label at its threshold)</h3>",
        _table(["label"] + [t for _, t in LABEL_COLS] + ["threshold"], rows) if rows else _na(),
        _table(["mean", "value"], [["mean Dice", _num(lab.get("mean_dice"))],
                                   ["mean IoU", _num(lab.get("mean_iou"))]])])


def _eval_block(eval_dir: Path) -> str:
    m = load(eval_dir / "metrics.json")
    if m is None:
        return _na("metrics.json not available") + "<h3>Per image</h3>" + _per_image(eval_dir)
    title = _what(eval_dir, m)
    regions = [(k, t) for k, t in REGIONS if isinstance(m.get(k), dict)]
    obs = (m.get("second_observer") or {}).get("fov")
    cols = [t for _, t in regions] + (["2nd observer (FOV)"] if obs else [])
    rows = [[name] + [m[k].get(name) for k, _ in regions] + ([obs.get(name)] if obs else [])
            for name in METRIC_ROWS]
    if isinstance(m.get("classes"), dict):
        parts = [title, _class_metrics(m)]
    elif isinstance(m.get("labels"), dict):
        parts = [title, _label_metrics(m)]
    else:
        parts = [title, "<h3>Metrics</h3>",
                 _table(["metric"] + cols, rows) if regions else _na("no region metrics")]
    counts = [[t] + [(m[k].get("counts") or {}).get(c) for c in ("tp", "fp", "fn", "tn")]
              for k, t in regions]
    if counts:
        parts.append(_table(["pixels", "TP", "FP", "FN", "TN"], counts))
    if isinstance(m.get("settings"), dict):
        parts.append("<p>Settings: " + _esc(", ".join(f"{k}={v}" for k, v in
                                                       m["settings"].items())) + "</p>")
    if isinstance(m.get("prediction"), str):  # multi-class: argmax, not eval.threshold
        parts.append("<p>Prediction: " + _esc(m["prediction"]) + "</p>")
    pngs = _eval_pngs(eval_dir)
    # Drawn here for both regions; evaluate's own bar figure (FOV only) would repeat it.
    bars = ('<div class="figs">' + _figure(_class_bars_png(m), "per-class IoU, precision, "
                                           "recall (background: NPV, specificity)") + "</div>"
            if regions else _figs(pngs["bars"]) if pngs["bars"] else _na())
    for name, body in (("Per-class results", bars),
                       ("Confusion matrices", _figs(pngs["confusion"], 380)),
                       ("ROC and precision-recall", _figs(pngs["curves"], 420)),
                       ("Overlays", _figs(pngs["overlays"], 540)),
                       ("Other figures", _figs(pngs["other"], 420))):
        if body or name != "Other figures":
            parts.append(f"<h3>{name}</h3>{body or _na()}")
    parts.append("<h3>Per image</h3>" + _per_image(eval_dir))
    return "".join(parts)


def eval_sections(run_dir: Path) -> list[str]:
    """One report section per evaluation folder (eval-<data>-<split>[-step-N]/) of RUN_DIR."""
    dirs = sorted(d for d in Path(run_dir).glob("eval-*") if d.is_dir())
    if not dirs:
        return [_section("Evaluation", lambda: _na(
            "not available (no eval-*/ folder: run `unetdist evaluate`)"))]
    return [_section(f"Evaluation: {d.name}", _eval_block, d) for d in dirs]


