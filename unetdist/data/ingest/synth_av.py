"""Synthetic artery/vein fundus samples, written in RITE's layout (issue 25).

The geometry, vessel tree growth, lesions and shading are `synth`'s, from the same seeds; only
each arcade's vein and artery leave the disc further apart (`SPREAD`: side by side they would
overlap for most of their length). The two trees are shaded apart as in real photographs: arteries
(oxygenated blood) are thinner, brighter and redder, with a central light reflex along the
wide ones; veins are wider and darker, and darken red more. Both trees leave the optic disc;
where an artery and a vein overlap the label is `CROSSING`. A few short stretches of thin vessel
are marked uncertain, as RITE's annotators did where they could not tell (white in av/*.png).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from unetdist.atomic import atomic_dir
from unetdist.data.ingest.synth import (
    VESSEL_WEIGHT,
    field_of_view,
    lesions,
    optics,
    random_geometry,
    sample_rng,
    shade,
    synth_jobs,
)
from unetdist.data.ingest.vessels import ARTERY, VEIN, Geometry, VesselCanvas, grow_vessel_tree
from unetdist.errors import UserError

BACKGROUND, CROSSING = 0, 3  # ARTERY (1) and VEIN (2) are the tree ids of vessels.py
CLASS_NAMES = ("background", "artery", "vein", "crossing")
# RITE's av/*.png colours (RGB) by class; white marks a vessel of uncertain type.
RITE_COLOURS = {BACKGROUND: (0, 0, 0), ARTERY: (255, 0, 0), VEIN: (0, 0, 255),
                CROSSING: (0, 255, 0)}
UNCERTAIN_COLOUR = (255, 255, 255)
# Darkening (R, G, B) of a full-contrast vessel of each tree: venous blood absorbs more red,
# an artery stays red and darkens every channel less (VESSEL_WEIGHT is synth's for both).
TREE_WEIGHT = {ARTERY: np.array([0.12, 0.8, 0.45]), VEIN: np.array([0.5, 1.1, 0.75])}
SPREAD = np.deg2rad(30)  # an arcade's vein and artery leave the disc this far apart
REFLEX = 0.45  # share of a wide artery's darkness that its central light reflex takes away


@dataclass(frozen=True)
class AVSample:
    """One rendered A/V sample: RGB image, class-index labels, uncertain stretches and FOV."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    labels: np.ndarray  # (H, W) uint8: 0 background, 1 artery, 2 vein, 3 crossing
    uncertain: np.ndarray  # (H, W) uint8 in {0, 1}: vessel pixels annotated "type unknown"
    fov: np.ndarray  # (H, W) uint8 in {0, 1}

    @property
    def vessels(self) -> np.ndarray:
        """The binary vessel mask (every vessel, uncertain ones included)."""
        return (self.labels > 0).astype(np.uint8)


def _darkness(canvas: VesselCanvas, g: Geometry, spots: np.ndarray,
              exudates: np.ndarray) -> np.ndarray:
    """Signed per-channel darkness (H, W, 3), blurred by the camera's optics."""
    artery, vein = canvas.trees[ARTERY], canvas.trees[VEIN]
    art = artery.dark / 255.0 * (1.0 - REFLEX * artery.core)
    dark = np.maximum(np.multiply.outer(art, TREE_WEIGHT[ARTERY]),
                      np.multiply.outer(vein.dark / 255.0, TREE_WEIGHT[VEIN]))
    dark = np.maximum(dark, np.multiply.outer(spots / 255.0, VESSEL_WEIGHT))
    dark -= np.multiply.outer(exudates / 255.0, VESSEL_WEIGHT)
    return optics(dark, g)


def _uncertain(labels: np.ndarray, g: Geometry, rng: np.random.Generator) -> np.ndarray:
    """2 to 4 short stretches of thin artery or vein, away from the disc, marked uncertain."""
    single = ((labels == ARTERY) | (labels == VEIN)).astype(np.uint8)
    thin = cv2.distanceTransform(single, cv2.DIST_L2, 3) <= 1.5
    yy, xx = np.nonzero(single.astype(bool) & thin)
    far = np.hypot(yy - g.disc[0], xx - g.disc[1]) > 2.0 * g.disc_r
    yy, xx = yy[far], xx[far]
    marks = np.zeros_like(single)
    if yy.size == 0:
        return marks
    radius = max(2, round(6 * g.scale))
    for i in rng.choice(yy.size, size=min(yy.size, int(rng.integers(2, 5))), replace=False):
        cv2.circle(marks, (int(xx[i]), int(yy[i])), radius, 1, -1)
    return marks & single


def render_av(size: tuple[int, int], rng: np.random.Generator) -> AVSample:
    """Render one A/V sample of size (H, W) from `rng`."""
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 32:
        raise UserError(f"synthetic images need at least 32x32 px, got {h}x{w}")
    g = random_geometry(h, w, rng)
    fov, r = field_of_view(g)
    canvas = VesselCanvas(h, w, per_tree=True)
    grow_vessel_tree(canvas, g, rng, SPREAD)
    spots, exudates = lesions(g, rng)
    image = shade(g, r, fov, _darkness(canvas, g, spots, exudates), rng)
    artery, vein = canvas.trees[ARTERY].mask & fov, canvas.trees[VEIN].mask & fov
    labels = (artery * ARTERY + vein * VEIN).astype(np.uint8)  # both: 1 + 2 = CROSSING
    return AVSample(image=image, labels=labels, uncertain=_uncertain(labels, g, rng), fov=fov)


def synthetic_av_sample(index: int, *, split: str = "train", seed: int = 0,
                        size: tuple[int, int] = (584, 565)) -> AVSample:
    """A/V sample `index` of `split` for `seed`; independent of how many are generated."""
    return render_av(size, sample_rng(index, split, seed))


def av_colours(sample: AVSample) -> np.ndarray:
    """RITE's colour-coded annotation (H, W, 3) RGB: uncertain vessels white."""
    table = np.array([RITE_COLOURS[k] for k in range(len(CLASS_NAMES))], dtype=np.uint8)
    rgb = table[sample.labels]
    rgb[sample.uncertain > 0] = UNCERTAIN_COLOUR
    return rgb


def rite_names(split: str, number: int) -> dict[str, str]:
    """Subfolder -> file name of image `number` of `split` (`mask` is our optional extra)."""
    stem = f"{number:02d}_{'training' if split == 'train' else 'test'}"
    return {"images": f"{stem}.tif", "av": f"{stem}.png", "vessel": f"{stem}.png",
            "mask": f"{stem}_mask.gif"}


def _imwrite(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), array):
        raise UserError(f"could not write {path}")


def _save_av(folder: Path, names: dict[str, str], sample: AVSample, fov_masks: bool) -> None:
    from PIL import Image

    _imwrite(folder / "images" / names["images"], sample.image)
    _imwrite(folder / "av" / names["av"], av_colours(sample))
    _imwrite(folder / "vessel" / names["vessel"], sample.vessels * 255)
    if fov_masks:  # DRIVE's mask GIF (cv2 writes no GIF)
        Image.fromarray(sample.fov * 255, "L").save(folder / "mask" / names["mask"], format="GIF")


def write_synthetic_av(out: str | Path, n_train: int = 20, n_test: int = 20,
                       size: tuple[int, int] = (584, 565), seed: int = 0,
                       progress: bool = True, overwrite: bool = False,
                       fov_masks: bool = False) -> Path:
    """Write a synthetic A/V dataset in RITE's layout to `out` (atomically) and return it.

    AV_groundTruth/training/{images,av,vessel}: 21_training.tif, 21_training.png (RGB: red
    artery, blue vein, green crossing, white uncertain, black background), 21_training.png
    (0/255, every vessel including uncertain ones); AV_groundTruth/test/...: 01_test.*.
    `fov_masks` adds {split}/mask/NN_{training|test}_mask.gif, DRIVE's FOV masks (RITE ships
    none; they are DRIVE's).
    """
    from tqdm import tqdm

    out = Path(out).absolute()
    jobs = synth_jobs(n_train, n_test, size)
    subs = ("images", "av", "vessel", *(("mask",) if fov_masks else ()))
    with atomic_dir(out, overwrite) as tmp:
        for split in sorted({split for split, _, _ in jobs}):  # no empty split folders
            for sub in subs:
                (_split_dir(tmp, split) / sub).mkdir(parents=True)
        for split, number, index in tqdm(jobs, desc="synth", unit="img", disable=not progress):
            sample = synthetic_av_sample(index, split=split, seed=seed, size=size)
            _save_av(_split_dir(tmp, split), rite_names(split, number), sample, fov_masks)
    return out


def _split_dir(root: Path, split: str) -> Path:
    return root / "AV_groundTruth" / ("training" if split == "train" else "test")


LABEL_NAMES = ("vessel", "artery", "vein")  # `--classes labels`: overlapping, crossings in both


def label_masks(sample: AVSample) -> dict[str, np.ndarray]:
    """The sample's overlapping {0,1} labels: every vessel (uncertain ones too), artery and
    vein (a crossing is both; an uncertain stretch keeps the tree it was drawn from)."""
    return {"vessel": sample.vessels,
            "artery": np.isin(sample.labels, (ARTERY, CROSSING)).astype(np.uint8),
            "vein": np.isin(sample.labels, (VEIN, CROSSING)).astype(np.uint8)}


def write_synthetic_labels(out: str | Path, n_train: int = 20, n_test: int = 20,
                           size: tuple[int, int] = (584, 565), seed: int = 0,
                           progress: bool = True, overwrite: bool = False) -> Path:
    """The A/V samples as a multi-label dataset in `shard --layout folders --multilabel`'s
    form (atomically): images/NN_training.png and labels/{vessel,artery,vein}/NN_training.png
    (0/255), the test split under test_images/ and test_labels/."""
    from tqdm import tqdm

    out = Path(out).absolute()
    jobs = synth_jobs(n_train, n_test, size)
    with atomic_dir(out, overwrite) as tmp:
        for split, number, index in tqdm(jobs, desc="synth", unit="img", disable=not progress):
            sample = synthetic_av_sample(index, split=split, seed=seed, size=size)
            prefix = "" if split == "train" else "test_"
            stem = Path(rite_names(split, number)["av"]).stem
            for sub, name in (("images", None), *(("labels", n) for n in LABEL_NAMES)):
                folder = tmp / f"{prefix}{sub}" / (name or "")
                folder.mkdir(parents=True, exist_ok=True)
                array = sample.image if name is None else label_masks(sample)[name] * 255
                _imwrite(folder / f"{stem}.png", array)
    return out
