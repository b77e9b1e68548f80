"""Staging throughput vs `shutil.copytree` and vs copytree followed by a sha256 pass.

    python -m unetdist.bench.staging --size-mb 300 [--dir /local/scratch] [--rounds 5]

Generates SIZE_MB of random shards with a manifest, then times, in one run and interleaved:
  stage          `unetdist.data.stage.node.stage` (read once, hash while writing, fsync, rename)
  stage-1thread  the same with threads=1
  copytree       plain `shutil.copytree` (no verification, no fsync)
  copytree+sha   copytree, then a separate sha256 pass over the copy checked against the
                 manifest (what a careful user does by hand); the pass reads the fresh copy
                 from the page cache, the best case for this baseline
  copytree+fsync+sha  the same, but the copy is fsynced first (durable, as stage's is)
  copytree+fsync+sha(cold)  the same again, with the copy evicted before the hash pass, which
                 then reads it from disk, as it would for a dataset larger than the page cache
Page cache: before every timed variant the source files are evicted from the page cache with
posix_fadvise(DONTNEED) (they are clean, so this drops them; the run reports a cold vs warm read
to show it worked), and the previous destination is synced and deleted, so no variant pays for
another's write-back. Median of ROUNDS per variant, run in alternating order. The machine's
load average is reported: other work on the box skews every variant. Data is removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from unetdist.data.stage.node import stage

SHARD_MB = 32


def _make_source(root: Path, size_mb: int) -> dict:
    root.mkdir(parents=True)
    shards, left, i = [], size_mb * 1_000_000, 0
    while left > 0:
        data = os.urandom(min(SHARD_MB * 1_000_000, left))
        name = f"train-{i:06d}.tar"
        with open(root / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        shards.append({"name": name, "bytes": len(data), "samples": 1,
                       "sha256": hashlib.sha256(data).hexdigest()})
        left, i = left - len(data), i + 1
    manifest = {"format": 1, "layout": "seed", "source": str(root),
                "splits": {"train": {"samples": len(shards), "shards": shards}},
                "total_bytes": sum(s["bytes"] for s in shards)}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _evict(root: Path) -> None:
    """Drop ROOT's (clean) files from the page cache, so the next read comes from disk."""
    for p in root.iterdir():
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _read_all(root: Path) -> float:
    t0 = time.perf_counter()
    for p in sorted(root.glob("*.tar")):
        with open(p, "rb", buffering=0) as f:
            while f.read(4 << 20):
                pass
    return time.perf_counter() - t0


def _sha_pass(root: Path, manifest: dict) -> None:
    for s in manifest["splits"]["train"]["shards"]:
        with open(root / s["name"], "rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != s["sha256"]:
                raise RuntimeError(f"{s['name']}: sha256 mismatch after copytree")


def _fsync_tree(root: Path) -> None:
    for p in root.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _variants(manifest: dict) -> dict:
    def copy_then_hash(src: Path, dst: Path) -> None:
        shutil.copytree(src, dst)
        _sha_pass(dst, manifest)

    def copy_sync_then_hash(src: Path, dst: Path) -> None:
        shutil.copytree(src, dst)
        _fsync_tree(dst)  # durable, as stage's copy is
        _sha_pass(dst, manifest)

    def copy_sync_then_hash_cold(src: Path, dst: Path) -> None:
        shutil.copytree(src, dst)
        _fsync_tree(dst)  # durable, and clean pages can be evicted
        _evict(dst)
        _sha_pass(dst, manifest)

    return {
        "stage": lambda s, d: stage(s, d, progress=False),
        "stage-1thread": lambda s, d: stage(s, d, threads=1, progress=False),
        "copytree": shutil.copytree,
        "copytree+sha": copy_then_hash,
        "copytree+fsync+sha": copy_sync_then_hash,
        "copytree+fsync+sha(cold)": copy_sync_then_hash_cold,
    }


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(fn, src: Path, dst: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of FN(SRC, DST)."""
    _evict(src)
    c0, t0 = _cpu(), time.perf_counter()
    fn(src, dst)
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    os.sync()  # untimed: the next variant must not pay for this one's write-back
    shutil.rmtree(dst)
    return seconds, cpu


def run_benchmark(size_mb: int, out_dir: str | os.PathLike, rounds: int = 5) -> dict:
    """Time every variant ROUNDS times on SIZE_MB of data under OUT_DIR (removed afterwards).

    Returns {"size_mb", "rounds", "cache": {cold/warm read MB/s}, "variants": {name:
    {"seconds": median wall, "mb_s": median throughput, "cpu_seconds": median CPU}},
    "ratio_vs_copytree", "ratio_vs_copytree_sha", "ratio_vs_copytree_fsync_sha",
    "ratio_vs_copytree_sha_cold", "load_avg_1min", "cpus"} (ratio = stage's throughput over
    the other variant's).
    """
    work = Path(tempfile.mkdtemp(prefix="unetdist-bench-staging-", dir=out_dir))
    try:
        src = work / "src"
        manifest = _make_source(src, size_mb)
        mb = manifest["total_bytes"] / 1e6
        _evict(src)
        cold = _read_all(src)
        warm = _read_all(src)
        variants = _variants(manifest)
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
        for r in range(rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                times[name].append(_timed(variants[name], src, work / "dst"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = {}
    for k, v in times.items():
        wall = statistics.median(t for t, _ in v)
        rows[k] = {"seconds": wall, "mb_s": mb / wall,
                   "cpu_seconds": statistics.median(c for _, c in v)}
    return {"size_mb": round(mb, 1), "rounds": rounds,
            "cache": {"cold_read_mb_s": mb / cold, "warm_read_mb_s": mb / warm},
            "variants": rows,
            "ratio_vs_copytree": rows["stage"]["mb_s"] / rows["copytree"]["mb_s"],
            "ratio_vs_copytree_sha": rows["stage"]["mb_s"] / rows["copytree+sha"]["mb_s"],
            "ratio_vs_copytree_fsync_sha":
                rows["stage"]["mb_s"] / rows["copytree+fsync+sha"]["mb_s"],
            "ratio_vs_copytree_sha_cold":
                rows["stage"]["mb_s"] / rows["copytree+fsync+sha(cold)"]["mb_s"],
            "load_avg_1min": os.getloadavg()[0], "cpus": os.cpu_count()}


def format_table(res: dict) -> str:
    head = (f"staging benchmark: {res['size_mb']} MB, median of {res['rounds']} rounds, "
            f"source evicted from the page cache before each variant "
            f"(cold read {res['cache']['cold_read_mb_s']:.0f} MB/s, "
            f"warm {res['cache']['warm_read_mb_s']:.0f} MB/s)")
    lines = [head, f"{'variant':<26}{'seconds':>10}{'MB/s':>10}{'cpu s':>10}"]
    for name, row in res["variants"].items():
        lines.append(f"{name:<26}{row['seconds']:>10.3f}{row['mb_s']:>10.0f}"
                     f"{row['cpu_seconds']:>10.3f}")
    lines.append(f"stage / copytree      = {res['ratio_vs_copytree']:.2f}x")
    lines.append(f"stage / copytree+sha  = {res['ratio_vs_copytree_sha']:.2f}x  (goal >= 1.3x; "
                 f"the hash pass reads the copy from the page cache)")
    lines.append(f"stage / copytree+fsync+sha = {res['ratio_vs_copytree_fsync_sha']:.2f}x  "
                 f"(both durable; the hash pass reads the copy from the page cache)")
    lines.append(f"stage / copytree+fsync+sha(cold) = {res['ratio_vs_copytree_sha_cold']:.2f}x  "
                 f"(the hash pass reads the copy from disk, as for data larger than RAM)")
    lines.append(f"load average {res['load_avg_1min']:.1f} on {res['cpus']} CPUs at the end")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mb", type=int, default=300, help="dataset size (default 300)")
    p.add_argument("--dir", default=None, help="scratch folder (default: the system temp dir)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per variant")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result here")
    args = p.parse_args(argv)
    res = run_benchmark(args.size_mb, args.dir or tempfile.gettempdir(), rounds=args.rounds)
    print(format_table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
