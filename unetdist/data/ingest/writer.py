"""Raw dataset -> webdataset tar shards + manifest.json, and the manifest's readers.

Per sample, in this order: `<id>.image.png` (RGB, original size), `<id>.label.png` and
`<id>.fov.png` (gray 0/255; FOV all 255 when the layout has none), `<id>.label2.png` when a
second annotator exists, `<id>.meta.json`. Ids are sorted within a split; shards follow that
order. Output is byte-identical for identical input (see `unetdist.data.tario`).
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from unetdist.data.ingest.layouts import FolderSpec, RawSample
from unetdist.data.manifest import DEFAULT_MAX_BYTES, DEFAULT_MAX_SAMPLES, FORMAT, MANIFEST, SPLITS
from unetdist.errors import DataError, UserError
from unetdist.log import warn


def encode_sample(s: RawSample) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in the fixed order."""
    from unetdist.data.codec import encode_mask, encode_png
    from unetdist.data.ingest.checks import format_problems, load_sample

    loaded, problems = load_sample(s)
    if loaded is None:  # the file changed after validation
        raise DataError(format_problems(problems, s.source))
    h, w = loaded.image.shape[:2]
    fov = loaded.fov if loaded.fov is not None else np.ones((h, w), dtype=np.uint8)
    members = [(f"{s.id}.image.png", encode_png(loaded.image)),
               (f"{s.id}.label.png", encode_mask(loaded.label)),
               (f"{s.id}.fov.png", encode_mask(fov))]
    if loaded.label2 is not None:
        members.append((f"{s.id}.label2.png", encode_mask(loaded.label2)))
    meta = {"id": s.id, "source": s.source, "split": s.split, "height": h, "width": w}
    members.append((f"{s.id}.meta.json", json.dumps(meta).encode()))
    return members


def plan_shards(n: int, max_samples: int) -> list[int]:
    """Balanced shard sizes (differing by at most one): resampled training picks shards
    uniformly, so a small last shard would over-sample its few samples."""
    k = -(-n // max_samples)
    return [n // k + (1 if i < n % k else 0) for i in range(k)] if n else []


def _ordered_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable,
                 window: int) -> Iterator:
    """pool.map that keeps at most `window` results in flight (bounded memory), in order."""
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


def _write_split(folder: Path, split: str, samples: list[RawSample], max_samples: int,
                 max_bytes: int, pool: ThreadPoolExecutor, bar) -> list[dict]:
    from unetdist.data.tario import TarShard

    cuts = set(np.cumsum(plan_shards(len(samples), max_samples))[:-1].tolist())
    shards: list[dict] = []
    shard: TarShard | None = None

    def finish() -> None:
        size, digest = shard.close()
        shards.append({"name": shard.path.name, "bytes": size, "sha256": digest,
                       "samples": shard.samples})

    try:
        for i, members in enumerate(_ordered_map(pool, encode_sample, samples, 16)):
            if shard is not None and (i in cuts or shard.size_with(members) > max_bytes):
                finish()
                shard = None
            if shard is None:
                shard = TarShard(folder / f"{split}-{len(shards):06d}.tar")
            shard.add(members)
            bar.update(1)
        if shard is not None:
            finish()
    except BaseException:
        if shard is not None:
            shard.abort()
        raise
    return shards


def _check_paths(src: Path, out: Path) -> None:
    src, out = src.resolve(), out.resolve()
    if out == src or src.is_relative_to(out):
        raise UserError(f"output {out} would contain or replace the source {src}")


def _check_layout_options(layout: str, folders: dict, suffixes: dict) -> None:
    """Folder options belong to `folders`, suffixes to `folders`/`seed`: never ignore them."""
    unused = [k for k, v in folders.items() if v and layout != "folders"]
    unused += [k for k, v in suffixes.items() if v and layout == "drive"]
    if unused:
        opts = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise UserError(f"{opts} do(es) not apply to --layout {layout}")


def _validated(src: Path, layout: str, spec: FolderSpec, split_val: float, threads: int,
               progress: bool) -> list[RawSample]:
    """Discover, decode and check every sample; DataError listing all problems."""
    from unetdist.data.ingest.checks import check_samples, format_problems
    from unetdist.data.ingest.layouts import assign_val, discover

    found = discover(src, layout, spec)
    for note in found.notes:
        warn(note)
    problems = found.problems + check_samples(found.samples, threads=threads, progress=progress)
    if problems:
        raise DataError(format_problems(problems, str(src)))
    if not found.samples:
        raise DataError(f"no samples found in {src} (layout {layout})")
    return assign_val(found.samples, split_val)


def shard_dataset(src: str | Path, out: str | Path, *, layout: str = "drive",
                  split_val: float = 0.1, max_samples: int = DEFAULT_MAX_SAMPLES,
                  max_bytes: int = DEFAULT_MAX_BYTES, progress: bool = True,
                  overwrite: bool = False, threads: int | None = None,
                  images: str | None = None, labels: str | None = None,
                  fov: str | None = None, labels2: str | None = None,
                  test_images: str | None = None, test_labels: str | None = None,
                  test_fov: str | None = None, test_labels2: str | None = None,
                  image_suffix: str = "", label_suffix: str = "", fov_suffix: str = "",
                  label2_suffix: str = "") -> dict:
    """Validate every sample of the raw dataset at `src`, then write shards + manifest.json
    to `out` (via a temporary folder renamed at the end). Returns the manifest.

    Any invalid sample raises DataError listing every problem, before anything is written.
    `images`/`labels`/... are the `folders` layout's folders (relative to `src`).
    """
    from tqdm import tqdm

    from unetdist.atomic import atomic_dir, check_output_dir, fsync_path

    if max_samples < 1 or max_bytes < 1:
        raise UserError(f"--max-samples and --max-bytes must be >= 1, got {max_samples}, "
                        f"{max_bytes}")
    if not 0.0 <= split_val < 1.0:
        raise UserError(f"--split-val must be in [0, 1), got {split_val}")
    src, out = Path(src).absolute(), Path(out).absolute()
    _check_paths(src, out)
    check_output_dir(out, overwrite)  # fail before a long validation pass, not after
    _check_layout_options(layout, {"images": images, "labels": labels, "fov": fov,
                                   "labels2": labels2, "test_images": test_images,
                                   "test_labels": test_labels, "test_fov": test_fov,
                                   "test_labels2": test_labels2},
                          {"image_suffix": image_suffix, "label_suffix": label_suffix,
                           "fov_suffix": fov_suffix, "label2_suffix": label2_suffix})
    spec = FolderSpec(images or "images", labels or "labels", fov, labels2, test_images,
                      test_labels, test_fov, test_labels2, image_suffix, label_suffix,
                      fov_suffix, label2_suffix)
    threads = threads or min(4, os.cpu_count() or 1)
    samples = _validated(src, layout, spec, split_val, threads, progress)
    manifest: dict = {"format": FORMAT, "layout": layout, "source": str(src), "splits": {}}
    with atomic_dir(out, overwrite) as tmp, ThreadPoolExecutor(threads) as pool, \
            tqdm(total=len(samples), desc="sharding", unit="img", disable=not progress) as bar:
        for split in SPLITS:
            group = sorted((s for s in samples if s.split == split), key=lambda s: s.id)
            if group:
                shards = _write_split(tmp, split, group, max_samples, max_bytes, pool, bar)
                manifest["splits"][split] = {"samples": len(group), "shards": shards}
        manifest["total_bytes"] = sum(sh["bytes"] for sp in manifest["splits"].values()
                                      for sh in sp["shards"])
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        fsync_path(tmp / MANIFEST)
    return manifest
