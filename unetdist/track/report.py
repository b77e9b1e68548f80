"""One self-contained HTML page for a run directory (plots embedded as base64 PNG).

Reads only files: config.yaml, runinfo.json, metrics.jsonl, and of each evaluation folder
(eval-*/, one section each, see unetdist.track.report_eval) metrics.json, per_image.csv and
the PNGs under plots/. Every part that is missing or unreadable is shown as "not available"
rather than failing, because reports are often built for runs that crashed half-way.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from pathlib import Path
from typing import Any

from unetdist.atomic import inside, user_writes, write_atomic
from unetdist.errors import FileSystemError, UserError
from unetdist.eval.plots import plot_training_curves
from unetdist.track.jsonl import read_records
from unetdist.track.report_eval import eval_sections, load
from unetdist.track.report_html import CSS
from unetdist.track.report_html import esc as _esc
from unetdist.track.report_html import fig_bytes as _fig_bytes
from unetdist.track.report_html import figure as _figure
from unetdist.track.report_html import fmt as _fmt
from unetdist.track.report_html import is_number as _number
from unetdist.track.report_html import kv_table as _kv_table
from unetdist.track.report_html import na as _na
from unetdist.track.report_html import raw as _raw
from unetdist.track.report_html import section as _section
from unetdist.track.report_html import table as _table
from unetdist.track.wandb_tracker import scrub

REPORT_FILE = "report.html"
_THROUGHPUT = re.compile(r"(img|images?|samples?)[_/]?(per_?s|ps|s)$|throughput",
                         re.IGNORECASE)
_WAIT = re.compile(r"(data_?wait|wait_?frac)", re.IGNORECASE)
_MEM = re.compile(r"mem", re.IGNORECASE)



# ----------------------------------------------------------------------------- reading


def _records(path: Path) -> list[dict]:
    """metrics.jsonl records with an integer step (torn lines are skipped by read_records)."""

    return [r for r in read_records(path) if isinstance(r, dict) and isinstance(
        r.get("step"), int)]


# ----------------------------------------------------------------------------- sections


def _series(records: list[dict], split: str, key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in records if r.get("split", "train") == split
           and _number(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _curves_png(records: list[dict]) -> bytes:
    """Loss / lr / validation curves: plots.plot_training_curves, drawn to a temp file."""
    import tempfile


    with tempfile.TemporaryDirectory() as d:
        return plot_training_curves(records, Path(d) / "curves.png").read_bytes()


def _scalar_keys(records: list[dict], split: str, skip: set[str]) -> list[str]:
    keys: dict[str, None] = {}
    for r in records:
        if r.get("split", "train") == split:
            keys.update({k: None for k, v in r.items() if _number(v) and k not in skip})
    return list(keys)


def _small_multiples_png(records: list[dict], keys: list[str]) -> bytes:
    """One small panel per train scalar the curves figure does not show (grad norm, img/s...)."""
    from matplotlib.figure import Figure

    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.0 * cols, 2.7 * rows))
    for i, k in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        xs, ys = _series(records, "train", k)
        ax.plot(xs, ys, color="#2f5f98", marker="o" if len(xs) < 30 else None, ms=3)
        ax.set_title(k, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _fig_bytes(fig)


def _curves(records: list[dict]) -> str:
    if not records:
        return _na("not available (no metrics.jsonl records)")
    parts = [_figure(_curves_png(records), "loss, learning rate and validation metrics")]
    extra = _scalar_keys(records, "train", {"step", "time", "loss", "lr", "epoch"})
    if extra:
        parts.append(_figure(_small_multiples_png(records, extra), "other training scalars"))
    return '<div class="figs">' + "".join(parts) + "</div>"


def _throughput(records: list[dict]) -> str:
    train = [r for r in records if r.get("split", "train") == "train"]
    keys = _scalar_keys(records, "train", {"step", "time"})
    rows = []
    for k in keys:
        if not (_THROUGHPUT.search(k) or _WAIT.search(k) or _MEM.search(k)):
            continue
        vals = [r[k] for r in train if _number(r.get(k))]
        steady = vals[1:] or vals  # the first window includes start-up (compile, warm caches)
        rows.append([k, statistics.median(steady), statistics.fmean(steady), max(vals),
                     vals[-1], len(vals)])
    body = (_table(["scalar", "median (after first log)", "mean (after first log)", "max",
                    "last", "records"], rows) if rows
            else _na("not available (no img/s, data-wait or memory scalars in metrics.jsonl)"))
    return body + _step_rate(train)


def _step_rate(train: list[dict]) -> str:
    """Steps and training time of the whole run from the last train record's cumulative
    `train_s`; runs logged before it existed: the span between the first and last records."""
    last = train[-1] if train else {}
    if _number(last.get("train_s")) and last["train_s"] > 0 and last["step"] > 0:
        return (f"<p>{last['step']:,} steps in {last['train_s'] / 60:.1f} min of training time "
                f"({last['step'] / last['train_s']:.2f} steps/s; validation and checkpoints "
                "excluded).</p>")
    if len(train) > 1 and all(_number(r.get("time")) for r in (train[0], train[-1])):
        span = train[-1]["time"] - train[0]["time"]
        steps = train[-1]["step"] - train[0]["step"]
        if span > 0 and steps > 0:
            return (f"<p>{steps:,} steps between the first and last logged train records "
                    f"(steps {train[0]['step']:,}-{train[-1]['step']:,}) in {span / 60:.1f} "
                    f"min of wall time ({steps / span:.2f} steps/s).</p>")
    return ""


def _kv_rows(d: dict, prefix: str = "") -> list[list[Any]]:
    rows = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            rows.extend(_kv_rows(v, name + "."))
        else:
            rows.append([name, v if v != [] else "[]"])
    return rows


def _environment(run_dir: Path, config: dict | None) -> str:
    info = load(run_dir / "runinfo.json")
    if info is None and config and isinstance(config.get("runinfo"), dict):
        info = config["runinfo"]
    if not info:
        return _na("not available (no runinfo.json)")

    info = scrub(info)
    first = [k for k in ("gpus", "world_size", "precision", "host", "slurm_job_id", "git",
                         "python", "platform", "started") if k in info]
    main = [[k, info[k]] for k in first] + _kv_rows(
        {k: v for k, v in info.items() if k not in first and k != "versions"})
    if "gpus" not in info:
        main.insert(0, ["gpus", "not recorded"])
    if (run_dir / "wandb_run_id").is_file():
        main.append(["wandb run id", (run_dir / "wandb_run_id").read_text().strip()])
    cols = [_kv_table(main)]
    if isinstance(info.get("versions"), dict):
        cols.append("<h3>Package versions</h3>" + _kv_table(_kv_rows(info["versions"])))
    return '<div class="grid">' + "".join(f"<div>{c}</div>" for c in cols) + "</div>"


def _config(config: dict | None) -> str:
    if not config:
        return _na("not available (no config.yaml)")

    config = scrub({k: v for k, v in config.items() if k != "runinfo"})
    scalars = [[k, v] for k, v in config.items() if not isinstance(v, dict)]
    top = "<p>" + ", ".join(f"{_esc(k)}: {_esc(_raw(v))}" for k, v in scalars) + "</p>"
    parts = [f"<div><h3>{_esc(name)}</h3>{_kv_table(_kv_rows(sec))}</div>"
             for name, sec in config.items() if isinstance(sec, dict)]
    return f'{top}<div class="grid">{"".join(parts)}</div>'


def _cards(records: list[dict], run_dir: Path) -> str:
    cards = []
    train = [r["step"] for r in records if r.get("split", "train") == "train"]
    if train:
        cards.append(("steps logged", max(train)))
    dice = [(r["dice"], r["step"]) for r in records if r.get("split") == "val"
            and _number(r.get("dice"))]
    if dice:
        best = max(dice)
        cards.append((f"best val dice (step {best[1]:,})", best[0]))
    ips = [k for k in _scalar_keys(records, "train", {"step"}) if _THROUGHPUT.search(k)]
    vals = [r[ips[0]] for r in records if ips and _number(r.get(ips[0]))][1:]
    if vals:
        cards.append((f"median {ips[0]}", statistics.median(vals)))
    for d in sorted(run_dir.glob("eval-*")):
        m = load(d / "metrics.json") or {}
        if _number((m.get("fov") or {}).get("dice")):
            cards.append((f"{d.name[5:]} dice (FOV)", m["fov"]["dice"]))
        classes, av = m.get("classes"), m.get("av")  # a multi-class evaluation
        if isinstance(classes, dict) and _number(classes.get("mean_iou")):
            cards.append((f"{d.name[5:]} mIoU (FOV)", classes["mean_iou"]))
        if isinstance(av, dict) and _number(av.get("accuracy")):
            cards.append((f"{d.name[5:]} A/V accuracy", av["accuracy"]))
    if not cards:
        return ""
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{_fmt(v)}</div><div class="k">{_esc(k)}</div></div>'
        for k, v in cards) + "</div>"


# ----------------------------------------------------------------------------- the page


def render_report(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    config = load(run_dir / "config.yaml")
    records = _records(run_dir / "metrics.jsonl")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    head = (f"<header><h1>unetdist run: {_esc(run_dir.resolve().name)}</h1>"
            f'<div class="sub">{_esc(run_dir.resolve())} &middot; report generated {stamp}'
            "</div></header>")
    body = [_cards(records, run_dir), _section("Training curves", _curves, records),
            *eval_sections(run_dir),
            _section("Throughput", _throughput, records),
            _section("Environment", _environment, run_dir, config),
            _section("Config", _config, config)]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>unetdist report: {_esc(run_dir.resolve().name)}</title>"
            f"<style>{CSS}</style></head><body>{head}<main>{''.join(body)}</main>"
            "</body></html>\n")


# Files that every run directory has from its first step on (written by the trainer at start).
RUN_MARKERS = ("config.yaml", "runinfo.json", "metrics.jsonl")


def build_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report.html (temp name + rename) and return its path.

    A folder in the way, a read-only or full file system: one FileSystemError line. A symlink
    at report.html is replaced by the file, never written through."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not any((run_dir / n).is_file() for n in RUN_MARKERS):
        raise UserError(f"{run_dir} is not a run directory (none of {', '.join(RUN_MARKERS)}); "
                        "pass the train.run_dir of a run, e.g. runs/<config stem>")
    out = inside(run_dir, REPORT_FILE)
    if out.is_dir() and not out.is_symlink():
        raise FileSystemError(f"cannot write the report {out}: a folder is in the way; remove "
                              "or rename it")
    text = render_report(run_dir)
    with user_writes(out, "write the report"):
        write_atomic(out, text)
    return out
