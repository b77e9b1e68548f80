"""The embedded-default demo: synthetic fundus data -> shards -> staged copy -> DDP training ->
evaluation -> report, each step run through the same code paths a real job uses.

Training runs in a child `accelerate launch` (all GPUs, or 2 CPU processes over gloo when there
is no GPU), exactly like `accelerate launch -m unetdist train --config ...` typed by hand, and
stages the "shared" shard folder into the "local" one on its own. Evaluation is a child
`unetdist evaluate` on the staged test split. Children inherit the terminal, so the trainer's
and the evaluator's progress bars show as they run.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from unetdist.errors import UserError

MARKER = ".unetdist-demo"  # marks a folder the demo made, so a re-run may replace it
PARTS = ("raw", "shared", "local", "run")  # what the demo writes under its workdir
DEFAULT_SIZE = (256, 256)  # synthetic image size (H, W); see configs/demo.yaml
# --task av: arteries are 1-2 px wide at 256 px; at 384 px the same 600 steps reach artery Dice
# 0.81 instead of 0.72 (configs/demo_av.yaml), each step costing the same (96 px crops)
AV_SIZE = (384, 384)


class StepFailed(UserError):
    """A child process of the demo failed; its own output above says why."""

    exit_code = 1


@dataclass
class DemoOptions:
    workdir: Path = Path("demo_run")
    config: Path | None = None  # None: the packaged configs/demo.yaml (demo_av.yaml for av)
    task: str = "vessel"  # vessel | av (arteries and veins: RITE layout, 4 classes)
    size: tuple[int, int] | None = None  # None: DEFAULT_SIZE, or AV_SIZE for task av
    n_train: int = 20
    n_test: int = 20
    steps: int | None = None  # train.max_steps override
    nproc: int | None = None  # None: every GPU, or 2 CPU processes
    overrides: list[str] = field(default_factory=list)
    seed: int | None = None  # data seed (default 0) and, when given, the training seed
    progress: bool = True


@dataclass
class Topology:
    """How training is launched: process count, device kind, launcher flags."""

    nproc: int
    cuda: bool

    @property
    def multi(self) -> bool:
        return self.nproc > 1


@dataclass
class DemoResult:
    workdir: Path
    run_dir: Path
    best: Path
    eval_dir: Path
    report: Path
    metrics: dict  # eval-test/metrics.json
    best_metrics: dict  # best/metrics.json (the validation metrics the best model was chosen by)
    seconds: dict[str, float]  # wall time of each step
    train_records: list[dict] = field(default_factory=list)  # split=train rows of metrics.jsonl


# ----------------------------------------------------------------------------- planning


def default_config(task: str = "vessel") -> Path:
    """configs/demo.yaml (demo_av.yaml for --task av) as shipped inside the package (works
    from any directory)."""
    from unetdist.resources import resource  # lazily: `unetdist --help` imports this module

    return resource("configs", "demo_av.yaml" if task == "av" else "demo.yaml")


def topology(nproc: int | None) -> Topology:
    """All GPUs when CUDA is available, else 2 CPU processes (gloo); --nproc overrides."""
    import torch

    cuda = torch.cuda.is_available()
    n = nproc if nproc is not None else (torch.cuda.device_count() if cuda else 2)
    if n < 1:
        raise UserError(f"--nproc must be >= 1, got {n}")
    return Topology(n, cuda)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_overrides(opts: DemoOptions) -> list[str]:
    """The demo's paths (and --steps) first, so the user's own overrides win."""
    w = opts.workdir.absolute()
    out = [f"data.shared_dir={w / 'shared'}", f"data.local_dir={w / 'local'}",
           f"train.run_dir={w / 'run'}"]
    if opts.seed is not None:
        out.append(f"seed={opts.seed}")
    if opts.steps is not None:
        out.append(f"train.max_steps={opts.steps}")
    return out + list(opts.overrides)


def launch_command(config: Path, overrides: list[str], topo: Topology, precision: str,
                   port: int) -> list[str]:
    """`accelerate launch ... -m unetdist train --config CONFIG OVERRIDES`."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if topo.multi:
        cmd.append("--multi_gpu")
    elif not topo.cuda:
        cmd.append("--cpu")
    cmd += ["--num_processes", str(topo.nproc), "--num_machines", "1", "--mixed_precision",
            precision, "--dynamo_backend", "no", "--main_process_port", str(port),
            "-m", "unetdist", "train", "--config", str(config), *overrides]
    return cmd


def child_env(topo: Topology, *, training: bool) -> dict:
    """CPU training: one thread per process, so 2 processes share 2 cores without contention."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if training and not topo.cuda:
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
    return env


# ----------------------------------------------------------------------------- the steps


def prepare_workdir(workdir: Path) -> None:
    """Create WORKDIR, or clear what a previous demo wrote there; never anything else."""
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir {workdir} exists and is not a folder")
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise UserError(f"--workdir {workdir} is not empty and was not made by the demo; "
                        "choose another folder")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("written by `unetdist demo`; re-running the demo replaces "
                                  "this folder's contents\n")
    for part in PARTS:
        target = workdir / part
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)


def make_data(opts: DemoOptions) -> None:
    # lazily: `unetdist --help` imports this module for DEFAULT_SIZE
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    if opts.task == "av":
        from unetdist.data.ingest.synth_av import write_synthetic_av

        raw = write_synthetic_av(opts.workdir / "raw", n_train=opts.n_train, n_test=opts.n_test,
                                 size=opts.size, seed=opts.seed or 0, progress=opts.progress,
                                 fov_masks=True)
    else:
        raw = write_synthetic(opts.workdir / "raw", n_train=opts.n_train, n_test=opts.n_test,
                              size=opts.size, seed=opts.seed or 0, progress=opts.progress)
    m = shard_dataset(raw, opts.workdir / "shared", layout="rite" if opts.task == "av" else
                      "drive", progress=opts.progress)
    counts = ", ".join(f"{s} {e['samples']}" for s, e in m["splits"].items())
    print(f"{m['total_bytes'] / 2**20:.1f} MiB of shards ({counts}) in "
          f"{opts.workdir / 'shared'}", flush=True)


def run_child(cmd: list[str], env: dict, what: str) -> None:
    """Run CMD with the terminal attached (progress bars stay live); fail loudly."""
    print("$ " + shlex.join(cmd), flush=True)
    rc = subprocess.run(cmd, env=env, check=False).returncode
    if rc != 0:
        raise StepFailed(f"{what} failed (exit status {rc}); see its output above")


def train(opts: DemoOptions, config: Path, topo: Topology, precision: str) -> None:
    cmd = launch_command(config, train_overrides(opts), topo, precision, free_port())
    run_child(cmd, child_env(topo, training=True), "training")
    if (opts.workdir / "run" / "PREEMPTED").exists():
        raise StepFailed("training was interrupted (run/PREEMPTED); re-run the demo")


def evaluate(opts: DemoOptions, topo: Topology) -> None:
    """`unetdist evaluate` on the staged test split (one process: 20 small images)."""
    run = opts.workdir.absolute() / "run"
    cmd = [sys.executable, "-m", "unetdist", "evaluate", "--checkpoint", str(run / "best"),
           "--data", str(opts.workdir.absolute() / "local"), "--split", "test",
           "--out", str(run / "eval-test")]  # one dataset: the README's eval-test/
    if not opts.progress:
        cmd.append("--quiet")
    run_child(cmd, child_env(topo, training=False), "evaluation")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StepFailed(f"cannot read {path}: {e}") from None


def train_records(run_dir: Path) -> list[dict]:
    """The logged training scalars (img/s, data-wait fraction ...) of metrics.jsonl."""
    rows = []
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("split") == "train":
            rows.append(row)
    return rows


def header(i: int, n: int, text: str) -> None:
    print(f"\n=== [{i}/{n}] {text}", flush=True)


def run_demo(opts: DemoOptions) -> DemoResult:
    """Every step of the demo in order, with a header before each; returns where things are."""
    # lazily: `unetdist --help` imports this module for DEFAULT_SIZE
    from unetdist.config import load_config
    from unetdist.track.report import build_report

    config = (opts.config or default_config(opts.task)).absolute()
    if opts.size is None:
        opts.size = AV_SIZE if opts.task == "av" else DEFAULT_SIZE
    cfg = load_config(config, train_overrides(opts))  # bad overrides fail here, in one line
    topo = topology(opts.nproc)
    precision = cfg.train.precision
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    opts.workdir = Path(opts.workdir)
    prepare_workdir(opts.workdir)
    kind = "artery/vein fundus" if opts.task == "av" else "fundus"
    header(1, 4, f"synthesise {opts.n_train}+{opts.n_test} {kind} images "
                 f"({opts.size[0]}x{opts.size[1]}) and shard them into {opts.workdir}/shared")
    make_data(opts)
    seconds["data"], t = time.perf_counter() - t, time.perf_counter()
    where = f"{topo.nproc} GPU(s)" if topo.cuda else f"{topo.nproc} CPU process(es)"
    header(2, 4, f"train on {where} ({cfg.train.max_steps} steps; stages shared -> "
                 f"{opts.workdir}/local first)")
    train(opts, config, topo, precision)
    seconds["train"], t = time.perf_counter() - t, time.perf_counter()
    header(3, 4, "evaluate the best model on the synthetic test split")
    evaluate(opts, topo)
    seconds["evaluate"], t = time.perf_counter() - t, time.perf_counter()
    header(4, 4, "write the HTML report")
    run = opts.workdir / "run"
    report = build_report(run)
    seconds["report"] = time.perf_counter() - t
    return DemoResult(opts.workdir, run, run / "best", run / "eval-test", report,
                      _read_json(run / "eval-test" / "metrics.json"),
                      _read_json(run / "best" / "metrics.json"), seconds, train_records(run))


# ----------------------------------------------------------------------------- summary


def _metric(d: dict, key: str) -> str:
    v = d.get(key)
    return "n/a" if v is None else f"{v:.4f}"


def _training_line(rows: list[dict]) -> str:
    if not rows:
        return "training     (no training records in metrics.jsonl)"
    mean = {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in ("img_per_s", "data_wait")}
    return (f"training     {rows[-1]['step']} steps, {mean['img_per_s']:.0f} img/s on average, "
            f"{100 * mean['data_wait']:.1f}% of step time waiting for data")


def _test_line(m: dict) -> str:
    head = f"test split, inside the FOV ({m.get('num_images', '?')} images): "
    if "classes" in m:  # a multi-class evaluation
        c, av = m["classes"], m.get("av") or {}
        dice = "  ".join(f"{k} {_metric(v, 'dice')}" for k, v in c["per_class"].items())
        return (head + f"Dice {dice}  mIoU {_metric(c, 'mean_iou')}  "
                f"A/V accuracy {_metric(av, 'accuracy')}  vessel F1 {_metric(av, 'vessel_f1')}")
    fov = m.get("fov", {})
    return (head + f"Dice {_metric(fov, 'dice')}  AUC-ROC {_metric(fov, 'auc_roc')}  "
            f"mIoU {_metric(fov, 'miou')}  sensitivity {_metric(fov, 'recall')}  "
            f"specificity {_metric(fov, 'specificity')}  accuracy {_metric(fov, 'accuracy')}")


def summary(r: DemoResult) -> str:
    total = sum(r.seconds.values())
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in r.seconds.items())
    val, at = r.best_metrics.get("dice"), r.best_metrics.get("step")
    # a multi-class record (train.validation.class_record) has pixel_accuracy, a binary one not
    what = "mean foreground Dice" if "pixel_accuracy" in r.best_metrics else "FOV Dice"
    chosen = (f"  (chosen at step {at}: {r.best_metrics.get('split', 'val')} {what} {val:.4f})"
              if isinstance(val, float) else "")
    lines = [
        "", f"=== demo finished in {total:.0f} s ({steps})",
        f"run dir      {r.run_dir}",
        _training_line(r.train_records),
        f"best model   {r.best / 'model.safetensors'}{chosen}",
        f"predictions  {r.eval_dir / 'predictions'}",
        f"metrics      {r.eval_dir / 'metrics.json'}  (plots in {r.eval_dir / 'plots'})",
        f"report       {r.report}",
        _test_line(r.metrics),
        f"next: unetdist predict --checkpoint {r.best} --images YOUR_IMAGES --out preds",
    ]
    return "\n".join(lines)
