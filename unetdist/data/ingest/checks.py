"""Decode and validate raw samples: readable, same size, binary masks. Problems are collected.

Validation decodes every file once before anything is written; the writer decodes again (the
encoding dominates the cost, and keeping a whole dataset decoded in memory would not scale).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetdist.data.codec import MAX_PIXELS
from unetdist.data.ingest.readers import RawFileError, image_size, read_image, read_mask
from unetdist.data.ingest.records import Problem, RawSample

MAX_SHOWN = 20  # problems listed in an error message; the rest are counted
DEFAULT_MAX_PIXELS = MAX_PIXELS  # --max-pixels: the readers refuse larger images too


@dataclass(frozen=True)
class ReadOptions:
    """How raw files are read: `shard --binarize T` and `--max-pixels N`."""

    binarize: float | None = None  # threshold 3+-level masks at T (pixels > T are 1)
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse larger files from their header, undecoded


@dataclass(frozen=True)
class LoadedSample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label: np.ndarray  # (H, W) uint8 {0, 1}
    fov: np.ndarray | None  # None: the whole image
    label2: np.ndarray | None


def _check_pixels(path: Path, max_pixels: int) -> None:
    w, h = image_size(path)
    if w * h > max_pixels:
        raise RawFileError(f"image is {w}x{h} = {w * h / 1e6:.1f} MP, over --max-pixels "
                           f"{max_pixels} (raise it if this file is really that large)")


def load_sample(s: RawSample, opts: ReadOptions = ReadOptions()
                ) -> tuple[LoadedSample | None, list[Problem]]:
    """Decode a sample's files; (None, problems) when any file is unusable."""
    problems: list[Problem] = []

    def read(path: Path | None, reader):
        if path is None:
            return None
        try:
            _check_pixels(path, opts.max_pixels)  # before the decode allocates anything
            return reader(path)
        except RawFileError as e:
            problems.append(Problem(str(path), str(e)))
            return None

    def mask(path: Path) -> object:
        return read_mask(path, opts.binarize)

    image = read(s.image, read_image)
    if image is None:  # no point decoding (maybe huge) masks of an unusable image
        return None, problems
    masks = {name: (path, read(path, mask))
             for name, path in (("label", s.label), ("FOV mask", s.fov), ("label2", s.label2))}
    for name, (path, mask) in masks.items():
        if mask is None or image is None:
            continue
        if mask.shape != image.shape[:2]:
            problems.append(Problem(str(path), f"{name} is {mask.shape[0]}x{mask.shape[1]} "
                                    f"(HxW) but image {s.image.name} is "
                                    f"{image.shape[0]}x{image.shape[1]}"))
        elif name == "FOV mask" and not mask.any():
            problems.append(Problem(str(path), "FOV mask is empty (all zero)"))
    if problems or image is None:
        return None, problems
    return LoadedSample(image, masks["label"][1], masks["FOV mask"][1], masks["label2"][1]), []


def check_samples(samples: list[RawSample], *, threads: int = 4, progress: bool = True,
                  opts: ReadOptions = ReadOptions()) -> list[Problem]:
    """Every problem of every sample, in sample order (at most `threads` decoded at once)."""
    from unetdist.log import progress_iter

    def problems_of(s: RawSample) -> list[Problem]:
        return load_sample(s, opts)[1]

    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = progress_iter(pool.map(problems_of, samples), len(samples), desc="checking",
                                unit="img", enabled=progress)
        return [p for found in results for p in found]


def format_problems(problems: list[Problem], where: str) -> str:
    """A report for a DataError: the first MAX_SHOWN problems and how many more there are."""
    n = len(problems)
    lines = [f"{n} problem{'s' if n != 1 else ''} in {where}; nothing was written:"]
    lines += [f"  {p}" for p in problems[:MAX_SHOWN]]
    if n > MAX_SHOWN:
        lines.append(f"  ... and {n - MAX_SHOWN} more")
    return "\n".join(lines)
