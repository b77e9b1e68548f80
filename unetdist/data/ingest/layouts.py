"""Raw dataset layouts -> sample records (id, split, image, label, fov, label2 files).

Layouts:
- `drive`: the official DRIVE tree: {training,test}/images/*.tif, 1st_manual/NN_manual1.gif,
  mask/<stem>_mask.gif, and test/2nd_manual/NN_manual2.gif kept as a second label when present.
- `chase`, `stare`, `hrf`, `rite`: see `unetdist.data.ingest.datasets`.
- `seed`: the tutorial's Train_Images/, Train_Labels/, Test_Images/, Test_Labels/ (paired by
  stem, no FOV).
- `folders`: --images/--labels [--fov] [--labels2] (and optional --test-* folders), paired by
  stem with configurable suffixes (e.g. `--label-suffix=--av` pairs images/01.png with
  masks/01--av.jpg). With a multilabel class table the labels folder holds one subfolder per
  label, named as in the table (labels/disc/01.png, labels/cup/01.png).

Discovery only pairs files; `unetdist.data.ingest.checks` decodes and validates them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from unetdist.data.ingest.datasets import DATASETS
from unetdist.data.ingest.readers import image_stem
from unetdist.data.ingest.records import Discovery, Problem, RawSample, relative
from unetdist.data.keys import ID_RULE, is_sample_id
from unetdist.data.manifest import LAYOUTS
from unetdist.errors import DataError

__all__ = ["LAYOUTS", "FolderSpec", "assign_val", "discover"]


@dataclass(frozen=True)
class FolderSpec:
    """Folders (relative to the source root unless absolute) and the stem suffixes that pair
    them: image `<key><image_suffix>.*` goes with label `<key><label_suffix>.*` etc."""

    images: str = "images"
    labels: str = "labels"
    fov: str | None = None
    labels2: str | None = None
    test_images: str | None = None
    test_labels: str | None = None
    test_fov: str | None = None
    test_labels2: str | None = None
    image_suffix: str = ""
    label_suffix: str = ""
    fov_suffix: str = ""
    label2_suffix: str = ""
    channels: tuple[str, ...] = ()  # multilabel: the labels folder's subfolders, in table order


def _stems(folder: Path, found: Discovery) -> dict[str, list[Path]]:
    """Image files of `folder` by stem (several files may share a stem)."""
    out: dict[str, list[Path]] = {}
    for p in found.images(folder):
        out.setdefault(image_stem(p), []).append(p)
    return out


def _pick(index: dict[str, list[Path]] | None, folder: Path | None, stem: str, what: str,
          owner: Path, found: Discovery, required: bool = True) -> Path | None:
    """The one file named `stem`.* in `folder`; records a problem when missing or ambiguous."""
    if index is None or folder is None:
        return None
    paths = index.get(stem, [])
    if len(paths) == 1:
        return paths[0]
    if len(paths) > 1:
        found.problems.append(Problem(str(owner), f"several {what} files match: "
                                      + ", ".join(p.name for p in paths)))
    elif required:
        found.problems.append(Problem(str(owner), f"no {what}: expected {folder}/{stem}.*"))
    return None


def _folder(root: Path, name: str | None, what: str, found: Discovery,
            required: bool) -> Path | None:
    if name is None:
        return None
    path = Path(name) if Path(name).is_absolute() else root / name
    if path.is_dir():
        return path
    if required:
        found.problems.append(Problem(str(path), f"{what} folder not found"))
    return None


def _nonempty(folder: Path, found: Discovery) -> list[Path]:
    files = found.images(folder)
    if not files:
        found.problems.append(Problem(str(folder), "no image files in this folder"))
    return files


def _drive_split(root: Path, split: str, found: Discovery) -> None:
    base = root / ("training" if split == "train" else "test")
    images = _folder(base, "images", f"DRIVE {base.name}/images", found, True)
    manual = _folder(base, "1st_manual", "", found, False)
    if images is None:
        return
    if manual is None:
        if split == "test":
            found.notes.append(f"{base}/1st_manual not found: test split skipped (no labels)")
        else:
            found.problems.append(Problem(str(base / "1st_manual"), "label folder not found"))
        return
    mask = _folder(base, "mask", "FOV mask", found, True)
    second = _folder(base, "2nd_manual", "", found, False)
    labels, masks = _stems(manual, found), _stems(mask, found) if mask else None
    labels2 = _stems(second, found) if second else None
    for img in _nonempty(images, found):
        number = img.stem.split("_")[0]
        label = _pick(labels, manual, f"{number}_manual1", "label", img, found)
        fov = _pick(masks, mask, f"{img.stem}_mask", "FOV mask", img, found)
        label2 = _pick(labels2, second, f"{number}_manual2", "second label", img, found, False)
        if label is not None and (fov is not None or mask is None):
            found.samples.append(RawSample(img.stem, split, img, label, fov, label2,
                                           relative(img, root)))


def _key(stem: str, suffix: str) -> str | None:
    """The pairing key of a stem, or None when it lacks the suffix."""
    if not suffix:
        return stem
    return stem[: -len(suffix)] if stem.endswith(suffix) and len(stem) > len(suffix) else None


def _folder_split(root: Path, split: str, dirs: tuple, spec: FolderSpec, found: Discovery,
                  labels_optional: bool) -> None:
    images_dir, labels_dir, fov_dir, labels2_dir = dirs
    images = _folder(root, images_dir, f"{split} images", found, True)
    labels = _folder(root, labels_dir, f"{split} labels", found, not labels_optional)
    if images is None:
        return
    if labels is None:
        if labels_optional:
            found.notes.append(f"{root / labels_dir} not found: {split} split skipped "
                               "(no labels)")
        return
    fov = _folder(root, fov_dir, f"{split} FOV", found, True)
    second = _folder(root, labels2_dir, f"{split} second-label", found, True)
    channels = _channel_folders(labels, spec.channels, found)
    if channels is None:
        return
    idx = {"fov": _stems(fov, found) if fov else None,
           "label2": _stems(second, found) if second else None}
    for img in _nonempty(images, found):
        key = _key(img.stem, spec.image_suffix)
        if key is None:
            continue
        picked = [_pick(stems, folder, key + spec.label_suffix, what, img, found)
                  for what, (folder, stems) in channels.items()]
        f = _pick(idx["fov"], fov, key + spec.fov_suffix, "FOV mask", img, found)
        l2 = _pick(idx["label2"], second, key + spec.label2_suffix, "second label", img, found)
        if None not in picked and (f is not None or fov is None) and (l2 or second is None):
            found.samples.append(RawSample(img.stem, split, img, picked[0], f, l2,
                                           relative(img, root),
                                           channels=tuple(picked) if spec.channels else ()))


def _channel_folders(labels: Path, names: tuple[str, ...], found: Discovery
                     ) -> dict[str, tuple[Path, dict]] | None:
    """{what: (folder, stems)} of the label masks: the labels folder itself, or with NAMES (a
    multilabel table's labels) its subfolder per label; None when one is missing."""
    if not names:
        return {"label": (labels, _stems(labels, found))}
    out = {}
    for name in names:
        sub = _folder(labels, name, f"label {name!r}", found, True)
        if sub is None:
            return None
        out[f"{name!r} label"] = (sub, _stems(sub, found))
    return out


def _check_ids(found: Discovery) -> None:
    seen: dict[str, RawSample] = {}
    for s in found.samples:
        if not is_sample_id(s.id):
            found.problems.append(Problem(str(s.image), f"file stem {s.id!r} is not a valid "
                                          f"sample id (use {ID_RULE})"))
        elif s.id in seen:
            other = seen[s.id]
            where = (f"in both the {other.split} and the {s.split} split"
                     if other.split != s.split else "twice")
            found.problems.append(Problem(str(s.image), f"sample id {s.id!r} is {where} "
                                          f"(also {other.image})"))
        seen.setdefault(s.id, s)


def _note_broken_links(found: Discovery) -> None:
    """One warning for every skipped symlink, however many folders they were in."""
    links = sorted(set(found.broken_links))
    if links:
        shown = ", ".join(str(p) for p in links[:5]) + (", ..." if len(links) > 5 else "")
        found.notes.append(f"skipped {len(links)} symlink(s) that do not resolve to a file "
                           f"(dangling or a loop): {shown}")


def discover(root: str | Path, layout: str, spec: FolderSpec | None = None) -> Discovery:
    """Pair the files of a raw dataset; problems are collected, not raised."""
    root = Path(root).absolute()
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    if not root.is_dir():
        raise DataError(f"source folder not found: {root}")
    found = Discovery()
    if layout in DATASETS:
        DATASETS[layout](root, found)
    elif layout == "drive":
        if not (root / "training").is_dir():
            raise DataError(f"{root}: no training/ folder: is this DRIVE?")
        _drive_split(root, "train", found)
        if (root / "test").is_dir():
            _drive_split(root, "test", found)
    else:
        spec = spec or FolderSpec()
        if layout == "seed":
            spec = replace(spec, images="Train_Images", labels="Train_Labels", fov=None,
                           labels2=None, test_images="Test_Images", test_labels="Test_Labels",
                           test_fov=None, test_labels2=None)
        _folder_split(root, "train", (spec.images, spec.labels, spec.fov, spec.labels2),
                      spec, found, False)
        if spec.test_images and not spec.test_labels:
            found.problems.append(Problem(spec.test_images, "--test-images needs --test-labels"))
        elif spec.test_images and (layout == "folders" or (root / spec.test_images).is_dir()):
            _folder_split(root, "test", (spec.test_images, spec.test_labels, spec.test_fov,
                                         spec.test_labels2), spec, found, layout == "seed")
    _check_ids(found)
    _note_broken_links(found)
    return found


def assign_val(samples: list[RawSample], fraction: float) -> list[RawSample]:
    """Move a deterministic `fraction` of the training samples (at least one when > 0) to val.

    The chosen ids are those with the smallest sha256(id): stable, independent of file order,
    and unrelated to the numbering of the files.
    """
    import hashlib

    if not 0.0 <= fraction < 1.0:
        raise DataError(f"--split-val must be in [0, 1), got {fraction}")
    train = [s for s in samples if s.split == "train"]
    if fraction == 0 or not train:
        return list(samples)
    n_val = max(1, round(fraction * len(train)))
    if n_val >= len(train):
        raise DataError(f"--split-val {fraction} leaves no training samples out of "
                        f"{len(train)} (use --split-val 0)")
    ranked = sorted(train, key=lambda s: hashlib.sha256(s.id.encode()).hexdigest())
    val_ids = {s.id for s in ranked[:n_val]}
    return [replace(s, split="val") if s.id in val_ids else s for s in samples]
