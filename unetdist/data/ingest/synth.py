"""Procedural fundus-like images with a branching vessel tree, written in the DRIVE layout.

The demo and the tests need data that needs no download, exercises the DRIVE reader, and is
not trivial: vessels are clearly darker than their *local* background, but vignetting, an
illumination gradient, a bright optic disc, a dark macula, texture and noise make one global
threshold on the green channel a poor segmenter (a UNet has to learn local contrast).

Geometry is expressed in DRIVE pixels (565 px wide) and scaled to the requested size. All
shading is float64 so that the uint8 result does not depend on the CPU's SIMD paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from unetdist.atomic import atomic_dir
from unetdist.data.ingest.vessels import Geometry, VesselCanvas, grow_vessel_tree
from unetdist.errors import UserError

REF_SIZE = 565.0  # DRIVE image width: the unit of every geometric constant below
SPLIT_CODES = {"train": 1, "test": 2}  # keeps train and test images independent
VESSEL_WEIGHT = np.array([0.35, 1.0, 0.6])  # vessels show best in green, least in red


@dataclass(frozen=True)
class FundusSample:
    """One rendered sample: RGB image, vessel mask and field-of-view mask."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    vessels: np.ndarray  # (H, W) uint8 in {0, 1}
    fov: np.ndarray  # (H, W) uint8 in {0, 1}


def random_geometry(h: int, w: int, rng: np.random.Generator) -> Geometry:
    s = min(h, w) / REF_SIZE
    radius = 0.475 * min(h, w)
    cy = h / 2 + rng.uniform(-0.01, 0.01) * h
    cx = w / 2 + rng.uniform(-0.01, 0.01) * w
    side = rng.choice((-1.0, 1.0))  # left or right eye
    disc = (cy + rng.uniform(-0.08, 0.08) * radius, cx + side * rng.uniform(0.5, 0.6) * radius)
    macula = (disc[0] + rng.uniform(0.0, 0.08) * radius,
              disc[1] - side * rng.uniform(0.72, 0.82) * radius)
    return Geometry(h, w, s, cy, cx, radius, disc, rng.uniform(38, 46) * s,
                    macula, rng.uniform(55, 70) * s)


def _smooth_field(h: int, w: int, cells: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-ish random field varying over about `cells` px (bicubic upsampling)."""
    gh, gw = max(2, round(h / cells) + 2), max(2, round(w / cells) + 2)
    grid = rng.standard_normal((gh, gw))
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def field_of_view(g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Binary FOV mask and the normalised radius r (0 at the centre, 1 on the FOV border)."""
    yy = (np.arange(g.h, dtype=np.float64)[:, None] - g.cy) / g.radius
    xx = (np.arange(g.w, dtype=np.float64)[None, :] - g.cx) / g.radius
    r = np.sqrt(yy * yy + xx * xx)
    return (r <= 1.0).astype(np.uint8), r


def _blob(g: Geometry, centre: tuple[float, float], radius: float, power: float) -> np.ndarray:
    """exp(-(d/radius)^power): power 2 is a Gaussian, larger powers are flatter-topped."""
    yy = (np.arange(g.h, dtype=np.float64)[:, None] - centre[0]) / radius
    xx = (np.arange(g.w, dtype=np.float64)[None, :] - centre[1]) / radius
    d2 = yy * yy + xx * xx
    return np.exp(-(d2 if power == 2 else d2 ** (power / 2)))


def _illumination(g: Geometry, r: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Vignetting x linear gradient x slow random variation x dark macula (multiplicative)."""
    vignette = 1.0 - rng.uniform(0.45, 0.6) * r ** rng.uniform(1.8, 2.6)
    theta = rng.uniform(0, 2 * np.pi)
    yy = (np.arange(g.h, dtype=np.float64)[:, None] - g.cy) / g.radius
    xx = (np.arange(g.w, dtype=np.float64)[None, :] - g.cx) / g.radius
    gradient = 1.0 + rng.uniform(0.12, 0.25) * (np.cos(theta) * xx + np.sin(theta) * yy)
    slow = 1.0 + 0.06 * _smooth_field(g.h, g.w, 150 * g.scale, rng)
    macula = 1.0 - rng.uniform(0.22, 0.32) * _blob(g, g.macula, g.macula_r, 2.0)
    return vignette * gradient * slow * macula


def shade(g: Geometry, r: np.ndarray, fov: np.ndarray, dark: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
    """The uint8 RGB image from illumination, disc, texture, signed vessel darkness, noise.

    `dark` (H, W) is weighted per channel like a vessel's (`VESSEL_WEIGHT`); a (H, W, 3)
    `dark` is used as it is (synth_av: arteries and veins darken the channels differently).
    """
    base = np.array([rng.uniform(0.80, 0.92), rng.uniform(0.38, 0.47), rng.uniform(0.13, 0.2)])
    light = _illumination(g, r, rng)
    texture = 1.0 + 0.03 * _smooth_field(g.h, g.w, 14 * g.scale, rng)
    disc = _blob(g, g.disc, g.disc_r, 6.0) + 0.35 * _blob(g, g.disc, 2.2 * g.disc_r, 2.0)
    disc_colour = np.array([0.25, 0.5, 0.3]) * rng.uniform(0.8, 1.0)
    edge = cv2.GaussianBlur(fov.astype(np.float64), (0, 0), max(0.8, 2.0 * g.scale))
    # In-place (H, W, 3) arithmetic: this function dominates the generation time.
    out = np.multiply.outer(light * texture, base)
    out += np.multiply.outer(disc, disc_colour)
    shading = np.multiply.outer(dark, -VESSEL_WEIGHT) if dark.ndim == 2 else -dark
    shading += 1.0
    out *= shading
    out *= edge[..., None]
    noise = rng.standard_normal(out.shape, dtype=np.float32)  # float32 draws are faster
    noise *= rng.uniform(0.008, 0.012)
    out += noise
    out += (0.012 * (1.0 - edge))[..., None]  # camera black level outside the FOV
    out *= 255.0
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def optics(dark: np.ndarray, g: Geometry) -> np.ndarray:
    """The camera's blur on a darkness map: thin vessels lose contrast, edges soften."""
    return cv2.GaussianBlur(dark, (0, 0), max(0.5, 0.6 * g.scale))


def lesions(g: Geometry, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dark round haemorrhages and bright exudates: blobs a UNet must learn are not vessels."""
    dark = np.zeros((g.h, g.w), dtype=np.uint8)
    bright = np.zeros((g.h, g.w), dtype=np.uint8)
    for canvas, count, level in ((dark, rng.integers(2, 9), (50, 90)),
                                 (bright, rng.integers(0, 12), (40, 110))):
        for _ in range(int(count)):
            rad, ang = g.radius * np.sqrt(rng.uniform(0.02, 0.8)), rng.uniform(0, 2 * np.pi)
            centre = (round(g.cx + rad * np.cos(ang)), round(g.cy + rad * np.sin(ang)))
            size = max(1, round(rng.uniform(2, 7) * g.scale))
            cv2.circle(canvas, centre, size, int(rng.integers(*level)), -1, cv2.LINE_8)
    return dark, bright


def render_fundus(size: tuple[int, int], rng: np.random.Generator) -> FundusSample:
    """Render one fundus-like sample of size (H, W) from `rng`."""
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 32:
        raise UserError(f"synthetic images need at least 32x32 px, got {h}x{w}")
    g = random_geometry(h, w, rng)
    fov, r = field_of_view(g)
    canvas = VesselCanvas(h, w)
    grow_vessel_tree(canvas, g, rng)
    spots, exudates = lesions(g, rng)
    # Signed darkness: vessels and haemorrhages darken, exudates brighten.
    dark = np.maximum(canvas.dark, spots).astype(np.float64) - exudates.astype(np.float64)
    dark = optics(dark / 255.0, g)
    image = shade(g, r, fov, dark, rng)
    return FundusSample(image=image, vessels=canvas.mask & fov, fov=fov)


def sample_rng(index: int, split: str, seed: int) -> np.random.Generator:
    """The generator of sample `index` of `split` for `seed` (synth_av's samples too)."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], index]))


def synthetic_sample(index: int, *, split: str = "train", seed: int = 0,
                     size: tuple[int, int] = (584, 565)) -> FundusSample:
    """Sample `index` of `split` for `seed`; independent of how many samples are generated."""
    return render_fundus(size, sample_rng(index, split, seed))


def drive_names(split: str, number: int) -> tuple[str, str, str]:
    """DRIVE file names (image, manual, mask) of image `number` of `split`."""
    kind = "training" if split == "train" else "test"
    return f"{number:02d}_{kind}.tif", f"{number:02d}_manual1.gif", f"{number:02d}_{kind}_mask.gif"


def _save_sample(root: Path, split: str, number: int, sample: FundusSample) -> None:
    from PIL import Image

    folder = root / ("training" if split == "train" else "test")
    img_name, manual_name, mask_name = drive_names(split, number)
    Image.fromarray(sample.image, "RGB").save(folder / "images" / img_name, format="TIFF")
    # Like some DRIVE manuals: a palette GIF whose raw indices are 0/1 (decode via palette).
    manual = Image.fromarray(sample.vessels, "P")
    manual.putpalette([0, 0, 0, 255, 255, 255])
    manual.save(folder / "1st_manual" / manual_name, format="GIF", optimize=False)
    Image.fromarray(sample.fov * 255, "L").save(folder / "mask" / mask_name, format="GIF")


def synth_jobs(n_train: int, n_test: int, size: tuple[int, int]) -> list[tuple[str, int, int]]:
    """(split, DRIVE number, sample index) of every image to write: training images are
    numbered from 21 and test images from 1, as in DRIVE (and RITE, its A/V labelling)."""
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise UserError(f"need n_train, n_test >= 0 and at least one image, got {n_train}, "
                        f"{n_test}")
    if min(size) < 32:
        raise UserError(f"synthetic images need at least 32x32 px, got {size[0]}x{size[1]}")
    jobs = [("train", 21 + i, i) for i in range(n_train)]
    return jobs + [("test", 1 + i, i) for i in range(n_test)]


def write_synthetic(out: str | Path, n_train: int = 20, n_test: int = 20,
                    size: tuple[int, int] = (584, 565), seed: int = 0,
                    progress: bool = True, overwrite: bool = False) -> Path:
    """Write a synthetic dataset in the DRIVE layout to `out` (atomically) and return it.

    training/{images,1st_manual,mask}: 21_training.tif, 21_manual1.gif, 21_training_mask.gif...
    test/{images,1st_manual,mask}: 01_test.tif, 01_manual1.gif, 01_test_mask.gif...
    """
    from tqdm import tqdm

    out = Path(out).absolute()
    jobs = synth_jobs(n_train, n_test, size)
    with atomic_dir(out, overwrite) as tmp:
        for split in sorted({split for split, _, _ in jobs}):  # no empty split folders
            for sub in ("images", "1st_manual", "mask"):
                (tmp / ("training" if split == "train" else "test") / sub).mkdir(parents=True)
        for split, number, index in tqdm(jobs, desc="synth", unit="img", disable=not progress):
            sample = synthetic_sample(index, split=split, seed=seed, size=size)
            _save_sample(tmp, split, number, sample)
    return out
