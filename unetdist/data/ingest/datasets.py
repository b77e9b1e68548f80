"""The public fundus datasets other than DRIVE, read as their owners distribute them.

- `chase` (CHASE_DB1): the official zip is one flat folder of `Image_NNL.jpg`/`Image_NNR.jpg`
  with `Image_NNL_1stHO.png` and `Image_NNL_2ndHO.png` (mode "1" PNGs); the common
  repackaging `images/`, `1st_label/`, `2nd_label/` (and optionally `mask/`) is accepted too.
  No FOV masks are shipped (estimated). Split: children 01-10 train, 11-14 test (20 / 8).
- `stare`: `stare-images/imNNNN.ppm`, labels `labels-ah/imNNNN.ah.ppm` (Hoover, the label) and
  `labels-vk/imNNNN.vk.ppm` (Kouznetsova, label2), any of them possibly `.ppm.gz`. Only images
  with an `ah` label are used. No FOV masks (estimated). No official split: the first half by
  id train, the rest test (10 / 10); `--folds K` covers all labelled images instead.
- `hrf`: `images/NN_{dr,g,h}.{jpg,JPG}`, `manual1/NN_x.tif`, `mask/NN_x_mask.tif`. Split per
  category (dr, g, h): the first 5 by number train, the rest test (15 / 30).
- `rite` (RITE, artery/vein labels of the DRIVE images): `AV_groundTruth/{training,test}/`
  `images/NN_<kind>.tif` (DRIVE's), `av/NN_<kind>.png` (RGB: red artery, blue vein, green
  crossing, white uncertain, black background; read through the class table `RITE_CLASSES`
  unless `--classes` says otherwise) and `vessel/` (binary, not read: the classes hold it).
  DRIVE's FOV masks are used when a split has `mask/NN_<kind>_mask.gif`, else estimated.
  SRC may be the folder holding AV_groundTruth/ or AV_groundTruth/ itself. Split: DRIVE's.

Each reader raises DataError at once when the folder is plainly another dataset, and records a
Problem per image whose label is missing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from unetdist.data.ingest.readers import image_stem
from unetdist.data.ingest.records import Discovery, Problem, RawSample, relative
from unetdist.errors import DataError

CHASE_IMAGE = re.compile(r"^Image_(\d\d)([LR])$")
CHASE_TRAIN_CHILDREN = 10  # children 01-10 train, 11-14 test (the usual 20 / 8 split)
STARE_IMAGE = re.compile(r"^im\d{4}$")
HRF_IMAGE = re.compile(r"^(\d\d)_(dr|g|h)$")
HRF_TRAIN_PER_CATEGORY = 5
RITE_SPLITS = (("train", "training"), ("test", "test"))
# RITE's av/*.png colours; white marks a vessel whose type the annotators could not tell.
RITE_CLASSES = ("background=0,0,0", "artery=255,0,0", "vein=0,0,255", "crossing=0,255,0",
                "uncertain=255,255,255:ignore")
DEFAULT_CLASSES = {"rite": RITE_CLASSES}  # layouts whose labels are class masks by default


def _index(found: Discovery, folder: Path) -> dict[str, Path]:
    """Image files of `folder` by stem; a stem used twice is a problem, the first file kept."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for p in found.images(folder):
        stem = image_stem(p)
        if stem in out:
            found.problems.append(Problem(str(p), f"same name stem as {out[stem].name}"))
        else:
            out[stem] = p
    return out


def _require(found: Discovery, index: dict[str, Path], stem: str, what: str, image: Path,
             where: Path) -> Path | None:
    path = index.get(stem)
    if path is None:
        found.problems.append(Problem(str(image), f"no {what}: expected {where}/{stem}.*"))
    return path


def _chase_folders(root: Path) -> tuple[Path, Path, Path, Path | None]:
    """(images, 1st labels, 2nd labels, masks or None): flat official zip or repackaged."""
    if (root / "images").is_dir():
        mask = root / "mask"
        return (root / "images", root / "1st_label", root / "2nd_label",
                mask if mask.is_dir() else None)
    return root, root, root, None


def read_chase(root: Path, found: Discovery) -> None:
    images_dir, first_dir, second_dir, mask_dir = _chase_folders(root)
    indexes: dict[Path, dict[str, Path]] = {}  # the flat zip: one folder, listed once
    for folder in {images_dir, first_dir, second_dir, mask_dir} - {None}:
        indexes[folder] = _index(found, folder)
    images = {s: p for s, p in indexes[images_dir].items() if CHASE_IMAGE.match(s)}
    if not images:
        raise DataError(f"{images_dir}: no Image_*.jpg files: is this CHASE_DB1?")
    first, second = indexes[first_dir], indexes[second_dir]
    masks = indexes[mask_dir] if mask_dir is not None else {}
    for stem, img in sorted(images.items()):
        label = _require(found, first, f"{stem}_1stHO", "1st observer label", img, first_dir)
        fov = None
        if mask_dir is not None:
            fov = masks.get(stem) or masks.get(f"{stem}_mask")
            if fov is None:
                found.problems.append(Problem(str(img), f"no FOV mask in {mask_dir}"))
                continue
        if label is None:
            continue
        child = int(CHASE_IMAGE.match(stem).group(1))
        split = "train" if child <= CHASE_TRAIN_CHILDREN else "test"
        found.samples.append(RawSample(stem, split, img, label, fov,
                                       second.get(f"{stem}_2ndHO"), relative(img, root),
                                       estimate_fov=fov is None))


def read_stare(root: Path, found: Discovery) -> None:
    images_dir, ah_dir, vk_dir = root / "stare-images", root / "labels-ah", root / "labels-vk"
    images = {s: p for s, p in _index(found, images_dir).items() if STARE_IMAGE.match(s)}
    if not images:
        raise DataError(f"{images_dir}: no im*.ppm files: is this STARE?")
    if not ah_dir.is_dir():
        raise DataError(f"{ah_dir}: label folder not found (STARE's labels-ah.tar unpacked "
                        "there)")
    ah = {image_stem(Path(s)): p for s, p in _index(found, ah_dir).items() if s.endswith(".ah")}
    vk = {image_stem(Path(s)): p for s, p in _index(found, vk_dir).items() if s.endswith(".vk")}
    if not ah:
        raise DataError(f"{ah_dir}: no im*.ah.ppm files: is this STARE?")
    for stem, label in ah.items():
        if stem not in images:
            found.problems.append(Problem(str(label), f"no image: expected "
                                          f"{images_dir}/{stem}.ppm or {stem}.ppm.gz"))
    labelled = sorted(s for s in images if s in ah)
    n_train = len(labelled) // 2
    for i, stem in enumerate(labelled):
        img = images[stem]
        found.samples.append(RawSample(stem, "train" if i < n_train else "test", img, ah[stem],
                                       None, vk.get(stem), relative(img, root),
                                       estimate_fov=True))


def read_hrf(root: Path, found: Discovery) -> None:
    images_dir, manual_dir, mask_dir = root / "images", root / "manual1", root / "mask"
    images = {s: p for s, p in _index(found, images_dir).items() if HRF_IMAGE.match(s)}
    if not images:
        raise DataError(f"{images_dir}: no NN_dr/NN_g/NN_h .jpg files: is this HRF?")
    manual, masks = _index(found, manual_dir), _index(found, mask_dir)
    by_category: dict[str, list[str]] = {}
    for stem in sorted(images, key=lambda s: int(HRF_IMAGE.match(s).group(1))):
        by_category.setdefault(HRF_IMAGE.match(stem).group(2), []).append(stem)
    for stems in by_category.values():
        for i, stem in enumerate(stems):
            img = images[stem]
            label = _require(found, manual, stem, "label", img, manual_dir)
            fov = _require(found, masks, f"{stem}_mask", "FOV mask", img, mask_dir)
            if label is not None and fov is not None:
                split = "train" if i < HRF_TRAIN_PER_CATEGORY else "test"
                found.samples.append(RawSample(stem, split, img, label, fov, None,
                                               relative(img, root)))


def _rite_base(root: Path) -> Path:
    """The folder holding training/ and test/: AV_groundTruth/ inside ROOT, or ROOT itself."""
    if (root / "AV_groundTruth").is_dir():
        return root / "AV_groundTruth"
    if (root / "training" / "av").is_dir():
        return root
    raise DataError(f"{root}: no AV_groundTruth/ folder (nor training/av/): is this RITE?")


def _rite_split(root: Path, base: Path, split: str, found: Discovery) -> None:
    images_dir, av_dir, mask_dir = base / "images", base / "av", base / "mask"
    if not images_dir.is_dir():
        found.problems.append(Problem(str(images_dir), "RITE images folder not found"))
        return
    if not av_dir.is_dir():
        if split == "test":
            found.notes.append(f"{av_dir} not found: test split skipped (no labels)")
        else:
            found.problems.append(Problem(str(av_dir), "label folder not found"))
        return
    av, masks = _index(found, av_dir), _index(found, mask_dir) if mask_dir.is_dir() else None
    images = _index(found, images_dir)
    if not images:
        found.problems.append(Problem(str(images_dir), "no image files in this folder"))
    for stem, img in sorted(images.items()):
        label = _require(found, av, stem, "A/V label", img, av_dir)
        fov = None if masks is None else _require(found, masks, f"{stem}_mask", "FOV mask",
                                                   img, mask_dir)
        if label is not None and (fov is not None or masks is None):
            found.samples.append(RawSample(stem, split, img, label, fov, None,
                                           relative(img, root), estimate_fov=fov is None))


def read_rite(root: Path, found: Discovery) -> None:
    base = _rite_base(root)
    for split, kind in RITE_SPLITS:
        if split == "train" or (base / kind).is_dir():
            _rite_split(root, base / kind, split, found)


DATASETS: dict[str, Callable[[Path, Discovery], None]] = {
    "chase": read_chase, "stare": read_stare, "hrf": read_hrf, "rite": read_rite}
# Layouts without an official split: `--folds K` folds all their labelled images.
NO_OFFICIAL_SPLIT = frozenset({"stare"})
