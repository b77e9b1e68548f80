"""Training input pipeline throughput vs a seed-style loader, and augmentation speed per core.

    python -m unetdist.bench.pipeline [--quick] [--workers 0 1 2] [--json out.json]

One run, on the same synthetic fundus images (DRIVE size by default), written both as shards
(for the trainer's stream, `unetdist.data.pipeline.run_batches`) and as PNG files (for the
baseline):
  seed          the original tutorial's loader: a map-style Dataset whose __getitem__
                cv2.imreads the image and mask PNGs, converts to gray, resizes to N x N and
                flips at random; a DataLoader with the same batch size and worker count
  ours-seed     run_batches in the seed's recipe (gray, resize N, flips only), data.cache on
  ours-nocache  the same with data.cache off (every sample decoded again, like the baseline)
  ours-crop     the default recipe: green channel, crops of N inside the FOV, full paired
                augmentation (flips, rot90, rotation+zoom, gamma/contrast/brightness, blur,
                noise), data.cache on
Each loader runs EPOCHS epochs of STEPS batches: ours is one `run_batches` stream whose workers
live across epochs, as the trainer reads it; the baseline starts a new DataLoader every epoch,
as the tutorial did. The first epoch (cold cache, worker start) and the median of the later
ones are reported separately, as samples/s of wall time and as CPU ms per sample (this process
plus its DataLoader workers, live or reaped: less sensitive to other work on the machine).
`per_core` times single-threaded `train_view` on N x N crops (the work one DataLoader worker
does per sample once the cache is warm). The load average is recorded: other work on the box
skews wall-clock figures, the loaders run back to back per worker count so ratios stay fair.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import torch

from unetdist.config import AugConfig, DataConfig
from unetdist.data.augment import train_view
from unetdist.data.codec import decode_sample
from unetdist.data.ingest.synth import synthetic_sample, write_synthetic
from unetdist.data.ingest.writer import shard_dataset
from unetdist.data.pipeline import run_batches
from unetdist.data.preprocess import prepare
from unetdist.data.reader import CACHE, iter_raw, split_shards


def _live_children_cpu() -> float:
    """CPU seconds of this process's live children: loader workers not reaped yet (getrusage
    counts a child only once it is reaped, and the trainer's workers live across epochs)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    try:
        tasks = Path(f"/proc/{os.getpid()}/task").iterdir()
        kids = {int(pid) for t in tasks for pid in (t / "children").read_text().split()}
    except OSError:  # no /proc (not Linux): reaped children only
        return 0.0
    for pid in kids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):  # exited meanwhile: counted once reaped
            pass
    return total


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + _live_children_cpu()


class TrainerStream:
    """One `run_batches` stream for every epoch, as the trainer reads it; a call draws an epoch.

    The stream (cache fill, worker start) begins on the first call, so the first epoch pays
    for it; the cache starts cold, whatever loader ran before.
    """

    def __init__(self, cfg: DataConfig, shards: Path) -> None:
        self.cfg, self.shards, self.batches = cfg, shards, None

    def __call__(self):
        if self.batches is None:
            CACHE.clear()
            self.batches = run_batches(self.cfg, str(self.shards), seed=0, rank=0, world_size=1)
        return islice(self.batches, self.cfg.steps_per_epoch)

    def close(self) -> None:
        if self.batches is not None:
            self.batches.close()  # stops the workers


class SeedStyleDataset(torch.utils.data.Dataset):
    """The baseline: read PNGs from disk on every access, gray, resize, random flips."""

    def __init__(self, folder: Path, size: int) -> None:
        self.images = sorted(folder.glob("*_image.png"))
        self.size = size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.images[i]
        img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY)
        mask = cv2.imread(str(path).replace("_image.png", "_label.png"), cv2.IMREAD_GRAYSCALE)
        img = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (self.size, self.size), interpolation=cv2.INTER_NEAREST)
        if random.random() < 0.5:
            img, mask = img[:, ::-1], mask[:, ::-1]
        if random.random() < 0.5:
            img, mask = img[::-1], mask[::-1]
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32) / 255.0)[None]
        y = torch.from_numpy((np.ascontiguousarray(mask) > 127).astype(np.float32))[None]
        return x, y


def _make_data(root: Path, n: int, size: tuple[int, int]) -> tuple[Path, Path]:
    """Synthetic images -> shards (our pipeline) + the same samples as PNG files (baseline)."""

    raw = write_synthetic(root / "raw", n_train=n, n_test=0, size=size, progress=False)
    shards = root / "shards"
    shard_dataset(raw, shards, split_val=0.0, progress=False)
    pngs = root / "png"
    pngs.mkdir()
    for shard in split_shards(str(shards), "train"):
        for r in iter_raw(shard):
            d = decode_sample(r)
            cv2.imwrite(str(pngs / f"{d['key']}_image.png"),
                        cv2.cvtColor(d["image"], cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_PNG_COMPRESSION, 3])  # what the shards use
            cv2.imwrite(str(pngs / f"{d['key']}_label.png"), d["label"] * 255)
    return shards, pngs


def _epoch(make_iter, samples: int) -> tuple[float, float]:
    """(wall s, CPU s) to draw SAMPLES samples from a fresh iterator."""
    t0, c0, seen = time.perf_counter(), _cpu_seconds(), 0
    for batch in make_iter():
        seen += len(batch[0]) if isinstance(batch, list | tuple) else len(batch["key"])
    assert seen == samples, (seen, samples)
    return time.perf_counter() - t0, _cpu_seconds() - c0


def _summary(times: list[tuple[float, float]], samples: int) -> dict:
    later = times[1:] or times
    wall, cpu = statistics.median(t[0] for t in later), statistics.median(t[1] for t in later)
    return {"first_epoch_sps": samples / times[0][0], "later_epoch_sps": samples / wall,
            "first_epoch_cpu_ms": 1e3 * times[0][1] / samples,
            "later_epoch_cpu_ms": 1e3 * cpu / samples}


def _our_configs(n: int, batch: int, steps: int, workers: int) -> dict:
    flips = AugConfig(rot90=False, rotate_deg=0, scale=0, brightness=0, contrast=0, gamma=0,
                      blur=0, noise=0)
    common = {"batch_size": batch, "steps_per_epoch": steps, "num_workers": workers}
    seed = DataConfig(channels="gray", normalize="unit", resize=n, crop=0, aug=flips,
                      cache=True, **common)
    nocache = DataConfig(channels="gray", normalize="unit", resize=n, crop=0, aug=flips,
                         cache=False, **common)
    crop = DataConfig(channels="green", crop=n, cache=True, **common)
    return {"ours-seed": seed, "ours-nocache": nocache, "ours-crop": crop}


def _loaders(shards: Path, pngs: Path, n: int, batch: int, steps: int, workers: int) -> dict:
    samples = batch * steps
    seed_ds = SeedStyleDataset(pngs, n)

    def seed_iter():
        sampler = torch.utils.data.RandomSampler(seed_ds, replacement=True, num_samples=samples)
        return torch.utils.data.DataLoader(seed_ds, batch_size=batch, sampler=sampler,
                                           num_workers=workers)

    out = {"seed": seed_iter}
    for name, cfg in _our_configs(n, batch, steps, workers).items():
        out[name] = TrainerStream(cfg, shards)
    return out


def _per_core(image_size: tuple[int, int], view: int, rounds: int) -> dict:
    """Single-threaded augmented VIEW x VIEW crops per second from one IMAGE_SIZE image."""

    src = synthetic_sample(0, size=image_size)
    decoded = {"key": "k", "image": src.image, "label": src.vessels, "fov": src.fov}
    out = {"view": view, "source": list(image_size)}
    variants = {"green": DataConfig(channels="green", crop=view),
                "rgb": DataConfig(channels="rgb", crop=view),
                "green+elastic": DataConfig(channels="green", crop=view,
                                            aug=AugConfig(elastic=1.0))}
    threads = cv2.getNumThreads()
    cv2.setNumThreads(0)  # one core, as in a DataLoader worker
    try:
        for name, cfg in variants.items():
            prep = prepare(decoded, cfg)
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(rounds):
                train_view(prep, cfg, np.random.default_rng(i))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            out[name] = {"samples_per_s_wall": rounds / wall, "samples_per_cpu_s": rounds / cpu}
    finally:
        cv2.setNumThreads(threads)
    return out


def run_benchmark(quick: bool = False, *, workers: tuple[int, ...] = (0, 1, 2),
                  n_images: int = 20, image_size: tuple[int, int] = (584, 565),
                  view: int = 512, batch: int = 4, steps: int = 25, epochs: int = 4,
                  progress: bool = False) -> dict:
    """Measure everything described in the module docstring; returns a JSON-able dict."""
    if quick:
        workers, n_images, image_size, view, batch, steps, epochs = (
            (0, 1), 4, (64, 72), 48, 2, 3, 2)
    samples = batch * steps
    result = {"images": n_images, "image_size": list(image_size), "view": view, "batch": batch,
              "steps": steps, "epochs": epochs, "cpus": os.cpu_count(),
              "load_avg_before": os.getloadavg()[0], "loaders": {}, "ratio_vs_seed": {}}
    with tempfile.TemporaryDirectory(prefix="unetdist-bench-pipe-") as d:
        shards, pngs = _make_data(Path(d), n_images, image_size)
        for w in workers:
            loaders = _loaders(shards, pngs, view, batch, steps, w)
            for name, make in loaders.items():
                try:
                    times = [_epoch(make, samples) for _ in range(epochs)]
                finally:
                    if isinstance(make, TrainerStream):
                        make.close()
                result["loaders"].setdefault(name, {})[str(w)] = _summary(times, samples)
                if progress:
                    print(f"  workers={w} {name}: {result['loaders'][name][str(w)]}",
                          file=sys.stderr)
            base = result["loaders"]["seed"][str(w)]
            result["ratio_vs_seed"][str(w)] = {
                name: {k: r[str(w)][f"{k}_epoch_sps"] / base[f"{k}_epoch_sps"]
                       for k in ("first", "later")}
                for name, r in result["loaders"].items() if name != "seed"}
    result["ratios"] = {  # flat headline ratios (what `unetdist bench` lists)
        f"{name} vs seed loader, {when} epoch, {w} worker(s)": r[name][when]
        for w, r in result["ratio_vs_seed"].items() for name in ("ours-seed", "ours-crop")
        for when in ("first", "later")}
    result["per_core"] = _per_core(image_size, view, 20 if quick else 300)
    result["load_avg_after"] = os.getloadavg()[0]
    return result


def _print(result: dict) -> None:
    print(f"{result['images']} images {result['image_size']}, views {result['view']}, "
          f"batch {result['batch']} x {result['steps']} steps/epoch, {result['epochs']} epochs, "
          f"{result['cpus']} CPUs, load avg {result['load_avg_before']:.1f} -> "
          f"{result['load_avg_after']:.1f}")
    print(f"{'loader':14s} {'workers':>7s} {'1st ep smp/s':>12s} {'later smp/s':>12s} "
          f"{'x seed (later)':>14s} {'CPU ms/smp (later)':>18s}")
    for name, by_w in result["loaders"].items():
        for w, r in by_w.items():
            ratio = result["ratio_vs_seed"][w].get(name, {}).get("later", 1.0)
            print(f"{name:14s} {w:>7s} {r['first_epoch_sps']:12.1f} {r['later_epoch_sps']:12.1f} "
                  f"{ratio:14.2f} {r['later_epoch_cpu_ms']:18.2f}")
    pc = result["per_core"]
    for k, v in pc.items():
        if isinstance(v, dict):
            print(f"per core, {pc['view']}x{pc['view']} view, {k}: "
                  f"{v['samples_per_cpu_s']:.0f} samples per CPU-second "
                  f"({v['samples_per_s_wall']:.0f}/s wall)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--json", help="also write the result to this file")
    a = p.parse_args()
    result = run_benchmark(a.quick, workers=tuple(a.workers), steps=a.steps, epochs=a.epochs,
                           progress=True)
    _print(result)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
