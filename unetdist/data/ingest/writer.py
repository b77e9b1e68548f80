"""Raw dataset -> webdataset tar shards + manifest.json, and the manifest's readers.

Per sample, in this order: `<id>.image.png` (RGB, original size), `<id>.label.png` and
`<id>.fov.png` (gray 0/255; FOV all 255 when the layout has none), `<id>.label2.png` when a
second annotator exists, `<id>.meta.json` (id, source, split, size, `fov_source`: file,
estimated or none). With a class table of more than two classes (`--classes`, or RITE's) the
label is `<id>.classes.png` instead (class indices, 255 = ignore), with a multilabel table
`<id>.channel1.png`.. (one 0/255 mask per label); with any table the manifest
holds it under "classes", and a colour mask's meta.json and the manifest's "snapped" map count
the pixels snapped to a class colour. Ids are sorted within a split (within a fold, for k-fold
shards); shards follow that order. Output is byte-identical for identical input (see
`unetdist.data.tario`).

Memory: at most `threads` samples are decoded at once and `threads + 1` encoded samples wait
for the tar writer, so 8-megapixel datasets (HRF) shard in a few hundred MB.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from unetdist.atomic import atomic_dir, check_output_dir, fsync_path
from unetdist.data.classes import ClassTable
from unetdist.data.codec import encode_label, encode_mask, encode_png
from unetdist.data.ingest.checks import (
    DEFAULT_MAX_FAR_SHARE,
    DEFAULT_MAX_PIXELS,
    DEFAULT_SNAP_TOLERANCE,
    ReadOptions,
    check_samples,
    format_problems,
    load_sample,
)
from unetdist.data.ingest.datasets import DEFAULT_CLASSES, NO_OFFICIAL_SPLIT
from unetdist.data.ingest.detect import layout_hint
from unetdist.data.ingest.folds import assign_folds
from unetdist.data.ingest.fov import estimate_fov, fov_diameter
from unetdist.data.ingest.layouts import FolderSpec, assign_val, discover
from unetdist.data.ingest.records import RawSample
from unetdist.data.manifest import DEFAULT_MAX_BYTES, DEFAULT_MAX_SAMPLES, FORMAT, MANIFEST, SPLITS
from unetdist.data.tario import TarShard
from unetdist.errors import DataError, UserError
from unetdist.log import progress as log_progress
from unetdist.log import warn


def _fov(s: RawSample, image: np.ndarray, fov: np.ndarray | None) -> tuple[np.ndarray, str]:
    """The sample's FOV (uint8 {0,1}) and where it came from."""

    if fov is not None:
        return fov, "file"
    est = estimate_fov(image) if s.estimate_fov else None
    if est is not None:
        return est.astype(np.uint8), "estimated"
    return np.ones(image.shape[:2], dtype=np.uint8), "none"


def encode_sample(s: RawSample, opts: ReadOptions | None = None) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in the fixed order."""

    loaded, problems = load_sample(s, opts or ReadOptions())
    if loaded is None:  # the file changed after validation
        raise DataError(format_problems(problems, s.source))
    h, w = loaded.image.shape[:2]
    fov, fov_source = _fov(s, loaded.image, loaded.fov)
    table = (opts or ReadOptions()).classes
    members = [(f"{s.id}.image.png", encode_png(loaded.image)),
               *((f"{s.id}.{name}", data) for name, data in encode_label(loaded.label, table)),
               (f"{s.id}.fov.png", encode_mask(fov))]
    if loaded.label2 is not None:
        members.append((f"{s.id}.label2.png", encode_mask(loaded.label2)))
    meta = {"id": s.id, "source": s.source, "split": s.split, "height": h, "width": w,
            "fov_source": fov_source, "fov_diameter": round(fov_diameter(fov), 1)}
    if loaded.snapped is not None:
        meta["snapped"] = loaded.snapped
    members.append((f"{s.id}.meta.json", json.dumps(meta).encode()))
    return members


def _meta(members: list[tuple[str, bytes]]) -> dict:
    return json.loads(members[-1][1])


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


def _write_split(folder: Path, split: str, groups: list[list[RawSample]], encode: Callable,
                 limits: tuple[int, int], pool: ThreadPoolExecutor, bar, window: int
                 ) -> list[dict]:
    """Shards of one split; each group (a fold, or the whole split) gets shards of its own.

    At most `window` encoded samples wait in memory. Each shard entry also carries
    "metas" and "group" (popped by the caller)."""

    max_samples, max_bytes = limits
    shards: list[dict] = []
    shard: TarShard | None = None
    metas: list[dict] = []

    def finish() -> None:
        size, digest = shard.close()
        shards.append({"name": shard.path.name, "bytes": size, "sha256": digest,
                       "samples": shard.samples, "metas": list(metas), "group": g})
        metas.clear()

    try:
        for g, group in enumerate(groups):
            cuts = set(np.cumsum(plan_shards(len(group), max_samples))[:-1].tolist())
            # bounded: a few 8 MP images in memory, not a whole split
            for i, members in enumerate(_ordered_map(pool, encode, group, window)):
                if shard is not None and (i in cuts or shard.size_with(members) > max_bytes):
                    finish()
                    shard = None
                if shard is None:
                    shard = TarShard(folder / f"{split}-{len(shards):06d}.tar")
                shard.add(members)
                metas.append(_meta(members))
                bar.update(1)
            if shard is not None:  # a fold never shares a shard with the next one
                finish()
                shard = None
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
    unused += [k for k, v in suffixes.items() if v and layout not in ("folders", "seed")]
    if unused:
        opts = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise UserError(f"{opts} do(es) not apply to --layout {layout}")


def _validated(src: Path, layout: str, spec: FolderSpec, threads: int, progress: bool,
               opts: ReadOptions) -> list[RawSample]:
    """Discover, decode and check every sample; DataError listing all problems. A folder that
    fails its layout but looks like another one says which (`detect.layout_hint`)."""

    try:
        found = discover(src, layout, spec)
    except DataError as e:
        raise DataError(f"{e}{layout_hint(src, layout)}") from e
    for note in found.notes:
        warn(note)
    if found.problems and (hint := layout_hint(src, layout)):
        raise DataError(format_problems(found.problems, str(src) + hint))
    problems = found.problems + check_samples(found.samples, threads=threads, progress=progress,
                                              opts=opts)
    if problems:
        raise DataError(format_problems(problems, str(src)))
    if not found.samples:
        raise DataError(f"no samples found in {src} (layout {layout}){layout_hint(src, layout)}")
    return found.samples


def _splits(samples: list[RawSample], layout: str, split_val: float | None, folds: int,
            fold_seed: int) -> tuple[list[RawSample], list[list[str]] | None]:
    """Samples with their final split, and the ids of each fold (None without --folds)."""

    if not folds:
        return assign_val(samples, 0.1 if split_val is None else split_val), None
    if split_val:
        raise UserError("--split-val does not combine with --folds (fold i is the validation "
                        "set of data.fold=i)")
    return assign_folds(samples, folds, fold_seed, layout in NO_OFFICIAL_SPLIT)


def _groups(samples: list[RawSample], split: str, fold_lists: list[list[str]] | None
            ) -> list[list[RawSample]]:
    group = sorted((s for s in samples if s.split == split), key=lambda s: s.id)
    if split != "train" or fold_lists is None:
        return [group] if group else []
    by_id = {s.id: s for s in group}
    return [[by_id[i] for i in ids] for ids in fold_lists]


def _summarise(manifest: dict, fold_lists: list[list[str]] | None, fold_seed: int) -> None:
    """Add total_bytes, fov_source(s), fov_diameter and folds from the shards' sample metas.

    fov_diameter (median per split, px) is what `eval.scale=auto` compares test images with.
    """
    metas: dict[str, list[dict]] = {}
    groups: dict[str, list[int]] = {}
    for split, entry in manifest["splits"].items():
        for sh in entry["shards"]:
            metas.setdefault(split, []).extend(sh.pop("metas"))
            groups.setdefault(split, []).append(sh.pop("group"))
    manifest["total_bytes"] = sum(sh["bytes"] for sp in manifest["splits"].values()
                                  for sh in sp["shards"])
    sources = [m["fov_source"] for ms in metas.values() for m in ms]
    counts = {k: sources.count(k) for k in ("file", "estimated", "none") if k in sources}
    manifest["fov_source"] = ("estimated" if "estimated" in counts
                              else "file" if "file" in counts else "none")
    manifest["fov_sources"] = counts  # per kind: e.g. an image whose estimate failed is none
    manifest["fov_diameter"] = {split: round(float(np.median([m["fov_diameter"] for m in ms])), 1)
                                for split, ms in metas.items()}
    snapped = {m["id"]: m["snapped"] for ms in metas.values() for m in ms if "snapped" in m}
    if snapped:
        manifest["snapped"] = snapped
    if fold_lists is not None:
        train = list(zip(groups["train"], manifest["splits"]["train"]["shards"]))
        names = [[sh["name"] for g, sh in train if g == i] for i in range(len(fold_lists))]
        manifest["folds"] = {"k": len(fold_lists), "seed": fold_seed, "ids": fold_lists,
                             "shards": names}


def fov_summary(manifest: dict) -> str | None:
    """One line on where the FOV masks came from, naming images left without one and what
    was done for them; None when every mask came from a file."""
    counts = manifest.get("fov_sources", {})
    none = counts.get("none", 0)
    if not none and not counts.get("estimated"):
        return None
    parts = [f"{counts[k]} {what}" for k, what in (("file", "from mask files"),
                                                   ("estimated", "estimated from the images"))
             if counts.get(k)]
    if none:
        parts.append(f"{none} with neither a mask file nor an estimate (no dark surround "
                     "found): fov.png is all ones, so they are scored over the whole image")
    return "FOV masks: " + ", ".join(parts)


def classes_summary(manifest: dict) -> str | None:
    """One line naming the classes (and the ignore entry) and the pixels snapped to a class
    colour; None for a dataset without a class table."""
    if manifest.get("classes") is None:
        return None
    table = ClassTable.from_manifest(manifest["classes"])
    line = "classes: " + ", ".join(table.names)
    if table.ignore is not None:
        line += f" (+ ignore {table.ignore.name})"
    if snapped := manifest.get("snapped"):
        line += (f"; {sum(snapped.values())} pixels snapped to the nearest class colour in "
                 f"{len(snapped)} colour mask{'s' if len(snapped) != 1 else ''}")
    return line


def shard_dataset(src: str | Path, out: str | Path, *, layout: str = "drive",
                  split_val: float | None = None, max_samples: int = DEFAULT_MAX_SAMPLES,
                  max_bytes: int = DEFAULT_MAX_BYTES, progress: bool = True,
                  overwrite: bool = False, threads: int | None = None,
                  binarize: float | None = None, folds: int = 0, fold_seed: int = 0,
                  max_pixels: int | None = None, classes: ClassTable | None = None,
                  snap_tolerance: float | None = None, max_far_share: float | None = None,
                  **folder_opts: str | None) -> dict:
    """Validate every sample of the raw dataset at `src`, then write shards + manifest.json
    to `out` (via a temporary folder renamed at the end). Returns the manifest.

    Any invalid sample raises DataError listing every problem, before anything is written.
    `folder_opts` are the `folders` layout's folders (images, labels, fov, labels2, test_*,
    relative to `src`) and the suffixes (image_suffix, label_suffix, ...).
    `split_val` defaults to 0.1 (0 with `folds`); `folds` >= 2 writes k-fold training shards.
    `classes` (default: the layout's, e.g. RITE's) makes the labels class masks, colour ones
    snapped within `snap_tolerance` (RGB distance) unless over `max_far_share` are far.
    """
    from functools import partial

    _check_options(max_samples, max_bytes, split_val, binarize, max_pixels)
    src, out = Path(src).absolute(), Path(out).absolute()
    _check_paths(src, out)
    check_output_dir(out, overwrite)  # fail before a long validation pass, not after
    spec = _folder_spec(layout, folder_opts)
    opts = _read_options(layout, spec, binarize, max_pixels, classes,
                         (snap_tolerance, max_far_share))
    if opts.classes is not None and opts.classes.is_multilabel:
        spec = replace(spec, channels=opts.classes.label_names)
    threads = threads or min(4, os.cpu_count() or 1)
    samples = _validated(src, layout, spec, threads, progress, opts)
    samples, fold_lists = _splits(samples, layout, split_val, folds, fold_seed)
    manifest: dict = {"format": FORMAT, "layout": layout, "source": str(src),
                      "binarize": binarize, "splits": {}}
    if opts.classes is not None:
        manifest["classes"] = opts.classes.to_manifest()
    with atomic_dir(out, overwrite) as tmp, ThreadPoolExecutor(threads) as pool, \
            log_progress(len(samples), desc="sharding", unit="img", enabled=progress) as bar:
        for split in SPLITS:
            groups = _groups(samples, split, fold_lists)
            if groups:
                shards = _write_split(tmp, split, groups, partial(encode_sample, opts=opts),
                                      (max_samples, max_bytes), pool, bar, threads + 1)
                manifest["splits"][split] = {"samples": sum(map(len, groups)), "shards": shards}
        _summarise(manifest, fold_lists, fold_seed)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        fsync_path(tmp / MANIFEST)
    return manifest


def _check_options(max_samples: int, max_bytes: int, split_val: float | None,
                   binarize: float | None, max_pixels: int | None) -> None:
    if max_samples < 1 or max_bytes < 1:
        raise UserError(f"--max-samples and --max-bytes must be >= 1, got {max_samples}, "
                        f"{max_bytes}")
    if split_val is not None and not 0.0 <= split_val < 1.0:
        raise UserError(f"--split-val must be in [0, 1), got {split_val}")
    if binarize is not None and not 0 <= binarize < 255:
        raise UserError(f"--binarize must be in [0, 255), got {binarize}")
    if max_pixels is not None and max_pixels < 1:
        raise UserError(f"--max-pixels must be >= 1, got {max_pixels}")


CLASS_LAYOUTS = ("rite", "folders", "seed")  # layouts whose labels may be class masks


def _read_options(layout: str, spec: FolderSpec, binarize: float | None,
                  max_pixels: int | None, table: ClassTable | None,
                  snapping: tuple[float | None, float | None]) -> ReadOptions:
    """The ReadOptions of a shard run; UserError naming the option that does not fit."""
    if table is None and layout in DEFAULT_CLASSES:
        table = ClassTable.from_specs(DEFAULT_CLASSES[layout], where=f"--layout {layout}")
    tolerance, far_share = snapping
    if table is None:
        if tolerance is not None or far_share is not None:
            raise UserError("--snap-tolerance and --max-far-share apply to colour masks read "
                            "through a class table: give --classes (or --classes-file)")
        return ReadOptions(binarize, max_pixels or DEFAULT_MAX_PIXELS)
    if layout not in CLASS_LAYOUTS:
        raise UserError(f"--classes does not apply to --layout {layout} (its labels are "
                        f"binary vessel masks); class masks are read by --layout "
                        f"{', '.join(CLASS_LAYOUTS)}")
    if binarize is not None:
        raise UserError("--binarize does not combine with a class table (class masks are "
                        "snapped to the table's colours or read as class indices)")
    if table.is_binary and table.ignore is not None:
        raise UserError(f"a 2-class table is binary (label.png 0/255) and has no ignore "
                        f"value: drop {table.ignore.name!r} or add a third class")
    if table.is_multilabel and layout != "folders":
        raise UserError(f"--multilabel reads one mask folder per label (--layout folders), "
                        f"not --layout {layout}")
    if not table.is_binary and (spec.labels2 or spec.test_labels2):
        raise UserError("--labels2/--test-labels2 do not combine with a multi-class table "
                        "(a shard holds one class map per sample)")
    tolerance = DEFAULT_SNAP_TOLERANCE if tolerance is None else tolerance
    far_share = DEFAULT_MAX_FAR_SHARE if far_share is None else far_share
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise UserError(f"--snap-tolerance must be a finite RGB distance >= 0, got {tolerance}")
    if not 0 <= far_share <= 1:
        raise UserError(f"--max-far-share must be in [0, 1], got {far_share}")
    return ReadOptions(None, max_pixels or DEFAULT_MAX_PIXELS, table, tolerance, far_share)


FOLDER_OPTS = ("images", "labels", "fov", "labels2", "test_images", "test_labels", "test_fov",
               "test_labels2")
SUFFIX_OPTS = ("image_suffix", "label_suffix", "fov_suffix", "label2_suffix")


def _folder_spec(layout: str, opts: dict) -> FolderSpec:
    unknown = set(opts) - set(FOLDER_OPTS) - set(SUFFIX_OPTS)
    if unknown:
        raise TypeError(f"unexpected options: {', '.join(sorted(unknown))}")
    folders = {k: opts.get(k) for k in FOLDER_OPTS}
    suffixes = {k: opts.get(k) or "" for k in SUFFIX_OPTS}
    _check_layout_options(layout, folders, suffixes)
    return FolderSpec(folders["images"] or "images", folders["labels"] or "labels",
                      *(folders[k] for k in FOLDER_OPTS[2:]), *suffixes.values())
