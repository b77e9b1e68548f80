"""A dataset's fingerprint: sizes, FOV diameters, class fractions, vessel calibre, intensities.

Read from the shards themselves (manifest + decoded samples), so it describes exactly what
training will see. The vessel calibre is the structure scale `plan` matches to the recipe's:
2 x the median of the label's distance transform along its skeleton (skimage's maintained
skeletonisation), inside the FOV. A distance transform moves in 1 px steps, so a label whose
vessels are a few px wide is first upsampled (linearly, thresholded at 0.5) by a power of two
until the calibre spans CALIBRE_SPAN px; a dataset drawn at 4x the calibre then measures 4x.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from unetdist.data.classes import IGNORE_INDEX, ClassTable
from unetdist.data.ingest.fov import fov_diameter
from unetdist.data.manifest import class_table, read_manifest
from unetdist.data.reader import decode_checked, iter_raw, split_shards

CHANNELS = ("red", "green", "blue")
CALIBRE_IMAGES = 4  # images measured for the calibre, spread over the split
CALIBRE_SPAN = 8.0  # px the calibre should span where it is measured
MAX_MEASURE_PIXELS = 12_000_000  # upsampled label size at most (skeletonisation memory/time)


@dataclass
class ImageStats:
    """One sample's numbers (inside its FOV where it says so)."""

    key: str
    split: str
    height: int
    width: int
    fov_diameter: float  # px
    label_fraction: float  # vessel pixels / FOV pixels
    brightness: float  # mean gray level inside the FOV, 0-255
    channel_mean: tuple[float, ...]  # R, G, B inside the FOV
    channel_std: tuple[float, ...]
    contrast: tuple[float, ...]  # per channel (background - vessel mean) / std, inside the FOV
    fov_pixels: int
    calibre: float | None = None  # px, on the images measured for it
    # multi-class: pixels of each class inside the FOV (ignore excluded); multi-label: of each
    # label (overlapping), "no label" first; () for a binary table (label_fraction says it all)
    class_pixels: tuple[int, ...] = ()


@dataclass
class Fingerprint:
    """What `plan` decides from; `lines()` is the printed form."""

    root: str
    split: str
    fov_source: str  # file | estimated | none (from the manifest)
    images: list[ImageStats] = field(default_factory=list)
    table: ClassTable = field(default_factory=ClassTable.binary)

    def _median(self, attr: str) -> float:
        return float(np.median([getattr(s, attr) for s in self.images]))

    @property
    def calibre(self) -> float:
        """Median vessel calibre (px) over the measured images."""
        values = [s.calibre for s in self.images if s.calibre is not None]
        return float(np.median(values)) if values else 0.0

    @property
    def size(self) -> tuple[int, int]:
        """Median (height, width)."""
        return round(self._median("height")), round(self._median("width"))

    @property
    def min_side(self) -> int:
        return min(min(s.height, s.width) for s in self.images)

    @property
    def fov_diameter(self) -> float:
        return self._median("fov_diameter")

    @property
    def class_fractions(self) -> dict[str, float]:
        """Pixel fractions inside the FOV, pooled over the images: background and vessel, or
        each class of the table (multi-label: each label, overlapping, and "no label")."""
        total = sum(s.fov_pixels for s in self.images) or 1
        if self.table.is_binary or not all(s.class_pixels for s in self.images):
            vessel = sum(s.label_fraction * s.fov_pixels for s in self.images) / total
            return {"background": 1.0 - vessel, "vessel": vessel}
        pooled = np.sum([s.class_pixels for s in self.images], axis=0) / total
        return dict(zip(self.table.names, map(float, pooled)))

    def channel_stats(self) -> dict[str, tuple[float, float, float]]:
        """channel -> (mean, std, vessel contrast) pooled inside the FOVs."""
        w = np.array([s.fov_pixels for s in self.images], np.float64)
        mean = np.array([s.channel_mean for s in self.images])
        var = np.array([s.channel_std for s in self.images]) ** 2 + mean ** 2
        pooled = (w[:, None] * mean).sum(0) / w.sum()
        std = np.sqrt(np.maximum((w[:, None] * var).sum(0) / w.sum() - pooled ** 2, 0))
        contrast = np.median(np.array([s.contrast for s in self.images]), axis=0)
        return {c: (float(pooled[i]), float(std[i]), float(contrast[i]))
                for i, c in enumerate(CHANNELS)}

    @property
    def is_gray(self) -> bool:
        """All three channels carry the same picture (a grayscale camera saved as RGB)."""
        m = [s.channel_mean for s in self.images]
        return all(max(c) - min(c) < 0.5 for c in m)

    def lines(self) -> list[str]:
        hs = [s.height for s in self.images]
        ws = [s.width for s in self.images]
        fovs = [s.fov_diameter for s in self.images]
        fr = self.class_fractions
        measured = sum(s.calibre is not None for s in self.images)
        out = [f"fingerprint of {self.root} ({self.split}: {len(self.images)} images)",
               (f"  image size: median {self.size[0]}x{self.size[1]} px (h x w), heights "
                f"{min(hs)}-{max(hs)}, widths {min(ws)}-{max(ws)}"),
               (f"  FOV diameter: median {self.fov_diameter:.0f} px ({min(fovs):.0f}-"
                f"{max(fovs):.0f}), FOV source: {self.fov_source}"),
               "  label fraction inside the FOV: " + ", ".join(f"{c} {v:.3f}"
                                                               for c, v in fr.items()),
               (f"  vessel calibre: median {self.calibre:.2f} px (2 x median distance "
                f"transform on the skeleton, {measured} images)")]
        for c, (mean, std, con) in self.channel_stats().items():
            out.append(f"  {c:5s} inside the FOV: mean {mean:6.1f}, std {std:5.1f}, vessel "
                       f"contrast {con:.2f}")
        return out


def _skeleton_calibre(mask: np.ndarray) -> float:
    from skimage.morphology import skeletonize

    dt = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    on = dt[skeletonize(mask > 0)]
    return 2.0 * float(np.median(on)) if on.size else 0.0


def vessel_calibre(label: np.ndarray, fov: np.ndarray) -> float | None:
    """Median vessel calibre (px) of a {0,1} label inside the FOV; None without vessels."""
    mask = (label > 0) & (fov > 0)
    if mask.sum() < 4:
        return None
    calibre, k = _skeleton_calibre(mask), 1
    while k < 8 and calibre * k < CALIBRE_SPAN and mask.size * (2 * k) ** 2 <= MAX_MEASURE_PIXELS:
        k *= 2
    if k == 1:
        return calibre
    up = cv2.resize(mask.astype(np.float32), None, fx=k, fy=k, interpolation=cv2.INTER_LINEAR)
    return _skeleton_calibre(up >= 0.5) / k


def class_pixels(label: np.ndarray, inside: np.ndarray, table: ClassTable) -> tuple[int, ...]:
    """Pixels of each class (multi-label: each label, "no label" first) inside the FOV."""
    if table.is_binary:
        return ()
    values = np.bincount(label[inside].reshape(-1), minlength=256)
    if table.is_multilabel:
        per_label = [int(values[[v for v in range(256) if v >> c & 1]].sum())
                     for c in range(len(table.label_names))]
        return (int(values[0]), *per_label)
    return tuple(int(v) for v in values[:table.num_classes])


def image_stats(d: dict, split: str, with_calibre: bool,
                table: ClassTable | None = None) -> ImageStats:
    """The numbers of one decoded sample (codec.decode_sample) of a dataset with TABLE."""
    table = table or ClassTable.binary()
    rgb, fov = d["image"], d["fov"] > 0
    # vessel: any class or label but the ignore value (the union, what the calibre measures)
    label = (d["label"] > 0) & (d["label"] != IGNORE_INDEX)
    inside = fov if fov.any() else np.ones_like(fov)
    pix = rgb[inside].astype(np.float64)
    vessel, back = label & inside, ~label & inside
    std = pix.std(axis=0)
    if vessel.any() and back.any():
        contrast = (rgb[back].mean(axis=0) - rgb[vessel].mean(axis=0)) / np.maximum(std, 1e-3)
    else:
        contrast = np.zeros(3)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[inside]
    return ImageStats(
        key=d["key"], split=split, height=rgb.shape[0], width=rgb.shape[1],
        fov_diameter=round(fov_diameter(inside), 1),
        label_fraction=float(vessel.sum() / inside.sum()), brightness=float(gray.mean()),
        channel_mean=tuple(map(float, pix.mean(axis=0))), channel_std=tuple(map(float, std)),
        contrast=tuple(map(float, contrast)), fov_pixels=int(inside.sum()),
        calibre=vessel_calibre(label, inside) if with_calibre else None,
        class_pixels=class_pixels(d["label"], inside, table))


def iter_decoded(root: str, split: str) -> Iterator[dict]:
    """The decoded samples of one split, in shard order (a bad sample is an error here)."""
    for shard in split_shards(root, split):
        for raw in iter_raw(shard):
            decoded, _ = decode_checked(raw, "error")
            yield decoded


def split_count(root: str, split: str) -> int:
    return sum(s.samples for s in split_shards(root, split))


def scan_split(root: str, split: str, *, calibre_images: int = CALIBRE_IMAGES,
               on_sample: Callable[[dict, ImageStats], None] | None = None) -> list[ImageStats]:
    """ImageStats of every sample of SPLIT; the calibre on `calibre_images` spread over it."""
    table = class_table(read_manifest(root))
    n = split_count(root, split)
    measure = set(np.linspace(0, n - 1, min(n, calibre_images)).round().astype(int).tolist()
                  if calibre_images > 0 else [])
    out = []
    for i, d in enumerate(iter_decoded(root, split)):
        stats = image_stats(d, split, i in measure, table)
        if on_sample is not None:
            on_sample(d, stats)
        out.append(stats)
    return out


def fingerprint(root: str, split: str = "train", *,
                on_sample: Callable[[dict, ImageStats], None] | None = None) -> Fingerprint:
    """The fingerprint of SPLIT (training by default) of the shard folder ROOT."""
    manifest = read_manifest(root)
    return Fingerprint(root=str(root), split=split,
                       fov_source=str(manifest.get("fov_source", "file")),
                       images=scan_split(root, split, on_sample=on_sample),
                       table=class_table(manifest))
