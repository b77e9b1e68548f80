"""`unetdist bench --gpu`: the trainer's own step on this machine's accelerator(s).

Each variant runs in a fresh process (an Accelerator's precision is fixed at construction):
the real `setup_run` (synthetic shards, a scratch run dir), the real loader (`run_batches`
with data.num_workers workers, pinned memory) and the real `unetdist.train.loop.train_step`,
`warmup` untimed steps, then `steps` timed ones (the clock stops after a device synchronize).
Per variant it reports:

- img/s per GPU, and MFU: img/s x FLOPs per image (forward + backward, counted on the model
  with torch's FlopCounterMode; 957 GFLOP for the seed UNet at 512^2, 1 -> 1 channels) over the
  device's dense bf16 peak (a table by device name; none on CPU);
- the data-wait fraction: time in `next(stream)` over the timed wall time;
- host syncs per step, counted over 5 further steps (`unetdist.bench.syncs`: CUDA's sync debug
  mode on a GPU, the patching fake on CPU);
- with N > 1 GPUs, the best variant again under `accelerate launch` with N processes: 1 -> N
  scaling efficiency (per-GPU img/s at N over at 1) and the all-reduce bus bandwidth of a
  gradient-sized fp32 buffer (2 (N-1)/N x bytes / time, NCCL's convention).

Variants: fp32, bf16, bf16 + channels_last, bf16 + channels_last + torch.compile (inductor).
On a machine without CUDA the same code runs in a reduced form (PROFILES["cpu"]: 128 px crops,
width-16 UNet, a few steps, 1 worker): figures of the code path on this CPU, not of a GPU.
The GPU profile (512 px, seed UNet, batch 16, 10 + 50 steps, 6 workers) fits in about 8 minutes
on one GPU including the compile, plus one N-process run on a multi-GPU node.

`record` appends the run's row to the GPU table of docs/RESULTS.md (that table is the file's
last section, so a row goes at the end).

    python -m unetdist.bench.gpu   # the measurements of `unetdist bench --gpu`, as JSON
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unetdist.atomic import write_atomic
from unetdist.bench.syncs import sync_counter
from unetdist.bench.trainer import stream as trainer_stream
from unetdist.config import ModelConfig, load_config
from unetdist.data.ingest.synth import write_synthetic
from unetdist.data.ingest.writer import shard_dataset
from unetdist.models.registry import build_model
from unetdist.train.preempt import PreemptionFlag
from unetdist.train.setup import setup_run, training_accelerator
from unetdist.train.step import train_step

PROFILES = {
    "gpu": {"size": 512, "width": 64, "batch": 16, "warmup": 10, "steps": 50, "workers": 6,
            "images": 24},
    "cpu": {"size": 128, "width": 16, "batch": 4, "warmup": 2, "steps": 6, "workers": 1,
            "images": 8},
}
VARIANTS = {
    "fp32": [],
    "bf16": ["train.precision=bf16"],
    "bf16_channels_last": ["train.precision=bf16", "model.channels_last=true"],
    "bf16_channels_last_compile": ["train.precision=bf16", "model.channels_last=true",
                                   "model.compile=true"],
}
# dense bf16 tensor-core peak, TFLOP/s (vendor data sheets); first match in the device name
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
                    ("H200", 989.0), ("H800", 989.0), ("GH200", 989.0), ("B200", 2250.0),
                    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0),
                    ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0))
SYNC_STEPS = 5
SECTION = "## GPU: `unetdist bench --gpu`"
HEADER = ("| date | device (settings) | fp32 img/s | bf16 img/s | bf16 + channels_last img/s "
          "| + compile img/s | data wait (best) | host syncs / step (best) | 1 -> N scaling |")


def peak_tflops(device_name: str) -> float | None:
    return next((p for key, p in PEAK_BF16_TFLOPS if key in device_name), None)


def flops_per_image(size: int, width: int) -> float:
    """Forward + backward FLOPs of the seed UNet (1 -> 1 channels) on one size^2 image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode


    model = build_model(ModelConfig(in_channels=1, width=width)).to("meta")
    x = torch.empty(1, 1, size, size, device="meta")
    with FlopCounterMode(display=False) as fc:
        model(x).sum().backward()
    return float(fc.get_total_flops())


def overrides(shards: str, run_dir: str, prof: dict) -> list[str]:
    return [f"data.shared_dir={shards}", f"train.run_dir={run_dir}", "train.resume=none",
            "data.stage=false", "data.channels=gray", f"data.crop={prof['size']}",
            f"data.batch_size={prof['batch']}", f"data.num_workers={prof['workers']}",
            "data.steps_per_epoch=1000", f"model.width={prof['width']}",
            f"train.max_steps={prof['warmup'] + prof['steps'] + SYNC_STEPS + 1}",
            "train.eval_every=0", "checkpoint.every_steps=0", "train.progress=false",
            "track.wandb.mode=disabled"]


# ----------------------------------------------------------------------------- one variant


def _steps(run, stream, flag, n: int, counter=None) -> tuple[float, float]:
    """n training steps; (wall seconds after a device sync, seconds waiting for data).

    With `counter`, its `counting()` wraps each `train_step` (not the loader: batches are host
    memory, and the workers' reads of it never wait for a GPU).
    """
    import contextlib

    import torch


    waited, t0 = 0.0, time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        micro = [next(stream) for _ in range(run.cfg.train.grad_accum)]
        waited += time.perf_counter() - t
        with counter.counting() if counter is not None else contextlib.nullcontext():
            train_step(run, micro, flag)
        run.state.step += 1
    if run.acc.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, waited


def _allreduce_busbw(acc, numel: int) -> float | None:
    """NCCL-convention bus bandwidth (GB/s) of an fp32 all-reduce of `numel` elements."""
    import torch
    import torch.distributed as dist

    n = acc.num_processes
    if n < 2:
        return None
    buf = torch.ones(numel, dtype=torch.float32, device=acc.device)
    for _ in range(3):
        dist.all_reduce(buf)
    if acc.device.type == "cuda":
        torch.cuda.synchronize()
    t0, iters = time.perf_counter(), 10
    for _ in range(iters):
        dist.all_reduce(buf)
    if acc.device.type == "cuda":
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / iters
    return 2 * (n - 1) / n * buf.numel() * 4 / sec / 1e9


def _measure(run, prof: dict) -> dict:
    """Warm-up, timed steps, then host syncs counted over SYNC_STEPS more steps."""

    stream, flag = trainer_stream(run), PreemptionFlag()
    try:
        t0 = time.perf_counter()
        _steps(run, stream, flag, prof["warmup"])
        warmup_s = time.perf_counter() - t0
        wall, waited = _steps(run, stream, flag, prof["steps"])
        counter, syncs = sync_counter(run.acc.device), []
        with counter.patched():
            for _ in range(SYNC_STEPS):
                _steps(run, stream, flag, 1, counter)
                syncs.append(len(counter.last))
    finally:
        stream.close()
    n = run.acc.num_processes
    images = prof["steps"] * run.cfg.data.batch_size * n
    return {"processes": n, "device": run.acc.device.type, "img_per_s": images / wall,
            "img_per_s_per_gpu": images / wall / n, "data_wait": waited / wall,
            "warmup_s": warmup_s, "host_syncs_per_step": max(syncs), "host_syncs_seen": syncs}


def run_variant(shards: str, out: str, prof: dict, extra: list[str]) -> dict:
    """Measure one variant in this process (every rank under `accelerate launch`)."""

    run_dir = Path(out).with_suffix(".run")  # beside the result: one run dir for all ranks
    cfg = load_config(None, overrides(shards, str(run_dir), prof) + extra)
    acc = training_accelerator(cfg)
    run = setup_run(cfg, acc, shards)
    try:
        result = _measure(run, prof)
    finally:
        run.tracker.finish()
        if run.lock is not None:
            run.lock.release()
    params = sum(p.numel() for p in run.model.parameters())
    result.update(allreduce_busbw_gbs=_allreduce_busbw(acc, params), grad_mb=params * 4 / 1e6)
    if acc.is_main_process:
        Path(out).write_text(json.dumps(result))
    acc.end_training()
    return result


# ----------------------------------------------------------------------------- orchestration


def _make_shards(root: Path, prof: dict) -> str:
    side = prof["size"] + prof["size"] // 8  # crops are taken inside a larger image
    raw = write_synthetic(root / "raw", n_train=prof["images"], n_test=0, size=(side, side),
                          seed=0, progress=False)
    shard_dataset(raw, root / "shards", layout="drive", split_val=0.0, progress=False)
    return str(root / "shards")


def _launch(nproc: int, shards: str, out: Path, prof: dict, extra: list[str],
            timeout: float) -> dict:
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                str(nproc), "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]
    cmd += ["-m", "unetdist.bench.gpu", "variant", shards, str(out),
            json.dumps(prof), *extra]  # a package module: works from any install
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if r.returncode != 0 or not out.is_file():
        tail = (r.stdout + r.stderr).strip().splitlines()[-8:]
        raise RuntimeError(f"exit {r.returncode}: " + " | ".join(tail))
    return json.loads(out.read_text())


def run_benchmark(quick: bool = False, log=print, timeout: float = 420) -> dict:
    """Every variant on one device, then the best on every GPU of the node; one JSON doc."""
    import torch

    cuda = torch.cuda.is_available()
    prof = dict(PROFILES["gpu" if cuda else "cpu"])
    variants = dict(VARIANTS)
    if quick:  # a smoke run of the code path; an inductor compile alone takes minutes on CPU
        prof.update(size=64, width=8, batch=2, warmup=1, steps=2, workers=0, images=4)
        del variants["bf16_channels_last_compile"]
    gpus = torch.cuda.device_count() if cuda else 0
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = peak_tflops(name) if cuda else None
    flops = flops_per_image(prof["size"], prof["width"])
    doc = {"profile": ("gpu" if cuda else "cpu (reduced: no CUDA device)")
           + (", quick: no compile variant, figures meaningless" if quick else ""),
           "settings": prof,
           "device": name, "gpus": gpus, "peak_bf16_tflops": peak,
           "gflop_per_image": flops / 1e9, "variants": {}, "errors": {}}
    with tempfile.TemporaryDirectory(prefix="unetdist-bench-gpu-") as tmp:
        shards = _make_shards(Path(tmp), prof)
        for variant, extra in variants.items():
            log(f"bench --gpu: {variant} on 1 {'GPU' if cuda else 'CPU process'}")
            try:
                res = _launch(1, shards, Path(tmp) / f"{variant}.json", prof, extra, timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                doc["errors"][variant] = str(e)[:2000]
                continue
            res["mfu"] = res["img_per_s_per_gpu"] * flops / (peak * 1e12) if peak else None
            doc["variants"][variant] = res
        if doc["variants"] and gpus > 1:
            best = max(doc["variants"], key=lambda v: doc["variants"][v]["img_per_s_per_gpu"])
            log(f"bench --gpu: {best} on {gpus} GPUs")
            try:
                res = _launch(gpus, shards, Path(tmp) / "scaling.json", prof, VARIANTS[best],
                              timeout)
                one = doc["variants"][best]["img_per_s_per_gpu"]
                res["variant"], res["scaling_efficiency"] = best, res["img_per_s_per_gpu"] / one
                doc["scaling"] = res
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                doc["errors"]["scaling"] = str(e)[:2000]
    return doc


def results_line(doc: dict, date: str) -> str:
    """One Markdown table row for docs/RESULTS.md."""
    def fig(v: str) -> str:
        r = doc["variants"].get(v)
        if r is None:
            return "failed" if v in doc["errors"] else "not run"
        mfu = f" ({r['mfu']:.0%} MFU)" if r.get("mfu") is not None else ""
        return f"{r['img_per_s_per_gpu']:.1f}{mfu}"

    best = max(doc["variants"].values(), key=lambda r: r["img_per_s_per_gpu"], default=None)
    s = doc.get("scaling")
    scaling = (f"{s['scaling_efficiency']:.0%} at {s['processes']}, all-reduce "
               f"{s['allreduce_busbw_gbs']:.0f} GB/s" if s else "n/a (1 device)")
    extra = (f"{best['data_wait']:.1%} | {best['host_syncs_per_step']}" if best else "n/a | n/a")
    p = doc["settings"]
    return (f"| {date} | {doc['device']} ({p['size']} px, width {p['width']}, batch "
            f"{p['batch']}, {p['steps']} steps) | " + " | ".join(fig(v) for v in VARIANTS)
            + f" | {extra} | {scaling} |")


def results_path() -> Path:
    """docs/RESULTS.md of the source checkout this package runs from."""
    from unetdist.errors import UserError

    path = Path(__file__).resolve().parents[2] / "docs" / "RESULTS.md"
    if not path.parent.is_dir():
        raise UserError(f"docs/ not found at {path.parent}: recording results needs a source "
                        "checkout (the benchmarks themselves run from any install)")
    return path


def record(doc: dict, path: Path | None = None) -> Path:
    """Append the run's row to RESULTS.md, adding the GPU table when the file has none."""
    path = path or results_path()
    text = path.read_text() if path.is_file() else "# Recorded results\n"
    if HEADER not in text:
        sep = "|" + "---|" * 2 + "---:|" * 7
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{HEADER}\n{sep}\n"
    row = results_line(doc, time.strftime("%Y-%m-%d"))
    write_atomic(path, (text.rstrip("\n") + "\n" + row + "\n").encode())
    return path


def main(argv: list[str]) -> int:
    if argv and argv[0] == "variant":
        shards, out, prof = argv[1], argv[2], json.loads(argv[3])
        run_variant(shards, out, prof, argv[4:])
        return 0
    doc = run_benchmark(quick="--quick" in argv)
    print(json.dumps(doc, indent=1))
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
