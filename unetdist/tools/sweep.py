"""Offline sweeps: a small grid/random spec -> one run folder per trial -> a summary table.

No W&B server needed. A spec (YAML):

    config: configs/demo.yaml        # the base experiment
    out: runs/sweep-lr               # the sweep folder: sweep.json, trial-000/, ..., summary
    method: grid                     # grid (every combination) | random (count draws)
    count: 4                         # random only
    seed: 0                          # random only
    overrides: [data.shared_dir=/shared/shards]   # for every trial
    parameters:                      # dotted config keys
      optim.lr: [1.0e-3, 3.0e-3]     # a list: grid axis / random choice
      data.fold: [0, 1]
      optim.weight_decay: {min: 1.0e-5, max: 1.0e-2, log: true}   # random only
    group_by: data.fold              # summary: the best trial per value (e.g. per fold)
    metric: dice                     # best/metrics.json key to rank by (higher is better)

`expand` validates every trial's config before anything runs and writes sweep.json; trials
then run one after another here (`run_local`) or as a SLURM array (slurm/kfold.sbatch, one
trial per task, which asks `trial_args` for its arguments); `summarize` reads each trial's
best/metrics.json into summary.csv / summary.md and best.txt (the best/ folder of the best
trial per group, ready for `unetdist evaluate --checkpoint $(cat best.txt)`). A local run
holds the sweep folder's lock (`sweep_lock`): a second `unetdist sweep` of the same folder is
refused at once, naming the trial in use and by whom.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unetdist.atomic import user_writes, write_atomic
from unetdist.config import load_config
from unetdist.errors import ConfigError, FileSystemError, UserError, one_line
from unetdist.log import say
from unetdist.tools.sweep_spec import Spec, Values, read_spec
from unetdist.train.runlock import RunLock, _describe, _read_holder

__all__ = [
    "Spec",
    "best_per_group",
    "combinations",
    "expand",
    "load_sweep",
    "read_spec",
    "run_local",
    "summarize",
    "sweep_lock",
    "trial_args",
]

SWEEP_FILE = "sweep.json"


def _draw(values: Values, rng: random.Random) -> Any:
    if isinstance(values, list):
        return rng.choice(values)
    if values.log:
        return float(math.exp(rng.uniform(math.log(values.min), math.log(values.max))))
    return rng.uniform(values.min, values.max)


def combinations(spec: Spec) -> list[dict[str, Any]]:
    """Every trial's parameter values, in a reproducible order."""
    keys = list(spec.parameters)
    if spec.method == "grid":
        return [dict(zip(keys, vals))
                for vals in itertools.product(*(spec.parameters[k] for k in keys))]
    rng = random.Random(spec.seed)
    return [{k: _draw(spec.parameters[k], rng) for k in keys} for _ in range(spec.count)]


def expand(spec: Spec) -> dict:
    """Validate every trial's config and write OUT/sweep.json; returns its content.

    Re-expanding the same spec into the same folder is allowed (a re-run resumes the
    trials); a different set of trials there is refused rather than mixed in.
    """

    trials = []
    for i, params in enumerate(combinations(spec)):
        name = f"trial-{i:03d}"
        run_dir = (spec.out / name).resolve()
        overrides = [*spec.overrides, *(f"{k}={v}" for k, v in params.items()),
                     f"train.run_dir={run_dir}"]
        try:
            load_config(spec.config, overrides)
        except ConfigError as e:
            raise ConfigError(f"sweep {name} ({_short(params)}): {e}") from None
        trials.append({"name": name, "params": params, "overrides": overrides,
                       "run_dir": str(run_dir)})
    doc = {"config": str(Path(spec.config).resolve()) if spec.config else None,
           "group_by": spec.group_by, "metric": spec.metric, "trials": trials}
    old = spec.out / SWEEP_FILE
    if old.is_file() and read_doc(old)["trials"] != trials:
        raise UserError(f"{spec.out} already holds a different sweep ({old}); choose another "
                        "out folder")
    spec.out.mkdir(parents=True, exist_ok=True)
    write_atomic(old, json.dumps(doc, indent=1) + "\n")
    return doc


def _short(params: dict) -> str:
    """The trial's parameters on one line (a value from the spec may hold a newline or a NUL)."""
    return one_line(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in params.items()))


def load_sweep(target: str | Path) -> tuple[Path, dict]:
    """(sweep folder, sweep.json) from a sweep folder or the spec that names it."""
    p = Path(target)
    folder = p if p.is_dir() else read_spec(p).out
    f = folder / SWEEP_FILE
    if not f.is_file():
        raise UserError(f"{folder} is not an expanded sweep (no {SWEEP_FILE}); run "
                        "`unetdist sweep SPEC.yaml` first")
    return folder, read_doc(f)


_TRIAL_KEYS = {"name", "params", "overrides", "run_dir"}


def read_doc(f: Path) -> dict:
    """A sweep.json, checked for the shape the commands use; UserError when it is not one."""
    try:
        doc = json.loads(f.read_bytes()[: 64 << 20])
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"{f} is not a readable sweep file ({type(e).__name__}); expand the "
                        "spec again into a new out folder") from None
    trials = doc.get("trials") if isinstance(doc, dict) else None
    if not isinstance(trials, list) or not all(
            isinstance(t, dict) and _TRIAL_KEYS <= set(t) and isinstance(t["params"], dict)
            and isinstance(t["overrides"], list) for t in trials) \
            or not isinstance(doc.get("config", 0), (str, type(None))) \
            or not isinstance(doc.get("metric"), str) or "group_by" not in doc:
        raise UserError(f"{f} is not a sweep file written by `unetdist sweep` (it lacks config, "
                        "metric, group_by or trials of name/params/overrides/run_dir)")
    return doc


def trial_args(doc: dict, index: int) -> list[str]:
    """`train` arguments of trial INDEX: [--config, FILE,] overrides (for kfold.sbatch)."""
    trials = doc["trials"]
    if not 0 <= index < len(trials):
        raise UserError(f"trial {index} does not exist: this sweep has trials 0-{len(trials) - 1}")
    head = ["--config", doc["config"]] if doc["config"] else []
    return head + trials[index]["overrides"]


def run_local(doc: dict, nproc: int = 1) -> list[str]:
    """Train the trials one after another here; returns the names of those that failed."""

    failed = []
    for i, t in enumerate(doc["trials"]):
        say(f"sweep: {t['name']} ({i + 1}/{len(doc['trials'])}): {_short(t['params'])}")
        cmd = [sys.executable, "-m", "unetdist"]
        if nproc > 1:
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                   "--num_processes", str(nproc), "--mixed_precision", "no",
                   "--dynamo_backend", "no", "-m", "unetdist"]
        if subprocess.run([*cmd, "train", *trial_args(doc, i)], check=False).returncode:
            failed.append(t["name"])
    return failed


def _alive_here(holder: dict) -> bool:
    """False only for a record of a process on this host that is gone (a stale record)."""
    import os
    import socket

    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process: alive
    return True


def _trial_in_use(doc: dict) -> str:
    """Which trial the running sweep is training, by whom (from the trial's run lock)."""
    for t in doc["trials"]:
        holder = _read_holder(Path(t["run_dir"]))
        if holder and _alive_here(holder):
            return f"{t['name']} is in use by its training ({_describe(holder)})"
    return "it is between trials"


@contextlib.contextmanager
def sweep_lock(folder: Path, doc: dict) -> Iterator[None]:
    """Hold the sweep folder for one local run: a second `sweep` of it is refused, naming the
    trial in use and by whom, instead of both failing trial after trial on each other's locks."""
    lock = RunLock(folder)
    try:
        lock.acquire()
    except FileSystemError:
        raise
    except UserError:  # held: RunLock's message speaks of a training, ours of the sweep
        raise UserError(f"sweep {folder} is already running ({_describe(_read_holder(folder))}): "
                        f"{_trial_in_use(doc)}; wait for it to end, stop it, or choose another "
                        "out folder") from None
    try:
        yield
    finally:
        lock.release()


# ----------------------------------------------------------------------------- summary


def _trial_row(t: dict, metric: str) -> dict:
    run = Path(t["run_dir"])
    row = {"trial": t["name"], **t["params"], metric: None, "step": None, "weights": "",
           "status": "not run", "best": str(run / "best")}
    mfile = run / "best" / "metrics.json"
    if mfile.is_file():
        m = json.loads(mfile.read_text())
        value = m.get(metric)
        row.update({metric: float(value) if isinstance(value, (int, float)) else None,
                    "step": m.get("step"), "weights": m.get("weights", "raw"), "status": "done"})
    test = run / "eval-test" / "metrics.json"  # train.sbatch scores best/ on the test split
    if test.is_file():
        row[f"test {metric}"] = json.loads(test.read_text()).get("fov", {}).get(metric)
    if (run / "PREEMPTED").is_file():
        row["status"] = "preempted"
    elif row["status"] == "not run" and (run / "checkpoints").is_dir():
        row["status"] = "incomplete"
    return row


def _ranked(rows: list[dict], metric: str) -> list[dict]:
    return sorted(rows, key=lambda r: (r[metric] is None, -(r[metric] or 0.0), r["trial"]))


def best_per_group(rows: list[dict], metric: str, group_by: str | None) -> list[dict]:
    """The best scored trial of each group_by value (or the single best), in group order."""
    scored = [r for r in rows if r[metric] is not None]
    if group_by is None:
        return _ranked(scored, metric)[:1]
    groups: dict[str, list[dict]] = {}
    for r in scored:
        groups.setdefault(json.dumps(r[group_by]), []).append(r)
    return [_ranked(g, metric)[0] for _, g in sorted(groups.items(), key=lambda kv: kv[0])]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _table(rows: list[dict], columns: list[str]) -> str:
    cells = [columns] + [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"
             for line in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _ensemble_line(path: Path) -> str:
    """An ensemble evaluation saved inside the sweep folder (evaluate --out SWEEP/NAME)."""
    try:
        m = json.loads(path.read_text())
        info, fov = m.get("info", {}), m["fov"]
    except (OSError, ValueError, KeyError):
        return ""
    members = info.get("ensemble", 1)
    auc = fov.get("auc_roc")
    return (f"\n{path.parent.name}: {members} model(s) on {info.get('split')} "
            f"({m.get('num_images')} images): FOV dice {fov['dice']:.4f}, AUC-ROC "
            f"{'-' if auc is None else f'{auc:.4f}'}")


def summarize(folder: Path, doc: dict) -> tuple[str, list[dict]]:
    """Write summary.csv, summary.md and best.txt; return (the table as text, best rows)."""
    metric, group_by = doc["metric"], doc["group_by"]
    rows = _ranked([_trial_row(t, metric) for t in doc["trials"]], metric)
    params = list(doc["trials"][0]["params"]) if doc["trials"] else []
    columns = ["trial", *params, metric, "step", "weights", "status"]
    if any(f"test {metric}" in r for r in rows):
        columns.insert(columns.index("step"), f"test {metric}")
    best = best_per_group(rows, metric, group_by)
    text = _table(rows, columns)
    label = f"best per {group_by}" if group_by else "best trial"
    text += f"\n\n{label} (by val {metric}):\n" + "\n".join(
        f"  {(str(r[group_by]) + ': ') if group_by else ''}{r['trial']} {metric} "
        f"{_fmt(r[metric])} -> {r['best']}" for r in best)
    text += "".join(_ensemble_line(p) for p in sorted(folder.glob("*/metrics.json")))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*columns, "best"], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in [*columns, "best"]})
    with user_writes(folder, "write the sweep summary into", "the sweep spec's out"):
        write_atomic(folder / "summary.csv", buf.getvalue())
        write_atomic(folder / "summary.md", text + "\n")
        write_atomic(folder / "best.txt", "".join(r["best"] + "\n" for r in best))
    return text, best
