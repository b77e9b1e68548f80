"""Which layout a raw dataset folder looks like, so a wrong `--layout` error names the right one.

Only the cheapest signs are read (folder names, the names of the files directly in a folder),
and only after a layout has failed: detection never chooses a layout by itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from unetdist.data.ingest.datasets import CHASE_IMAGE, HRF_IMAGE, STARE_IMAGE
from unetdist.data.ingest.readers import image_stem, is_image_name

NAMES = {"drive": "DRIVE", "chase": "CHASE_DB1", "stare": "STARE", "hrf": "HRF",
         "rite": "RITE", "seed": "the seed layout"}


def _stems(folder: Path) -> list[str]:
    try:
        return [image_stem(p) for p in folder.iterdir() if is_image_name(p)]
    except OSError:
        return []


def _has(folder: Path, pattern: re.Pattern) -> bool:
    return any(pattern.match(stem) for stem in _stems(folder))


def _rite(root: Path) -> bool:
    """RITE's tree, or its AV_groundTruth/ folder (whose training/images/ DRIVE's has too)."""
    return (root / "AV_groundTruth").is_dir() or (root / "training" / "av").is_dir()


SIGNS: dict[str, Callable[[Path], bool]] = {
    "drive": lambda root: (root / "training" / "1st_manual").is_dir()
    or ((root / "training" / "images").is_dir() and not _rite(root)),
    "chase": lambda root: _has(root, CHASE_IMAGE) or _has(root / "images", CHASE_IMAGE),
    "stare": lambda root: (root / "labels-ah").is_dir() or _has(root / "stare-images", STARE_IMAGE)
    or _has(root, STARE_IMAGE),
    "hrf": lambda root: _has(root / "images", HRF_IMAGE),
    "rite": _rite,
    "seed": lambda root: (root / "Train_Images").is_dir(),
}


def suggest_layout(folder: str | Path) -> str | None:
    """The one known layout whose signs `folder` shows, else None (none, or ambiguous)."""
    root = Path(folder)
    if not root.is_dir():
        return None
    matches = [name for name, looks_like in SIGNS.items() if looks_like(root)]
    return matches[0] if len(matches) == 1 else None


def layout_hint(folder: str | Path, layout: str) -> str:
    """" (it looks like CHASE_DB1: use --layout chase)" when `folder` looks like another known
    layout than `layout`, else ""."""
    found = suggest_layout(folder)
    if found is None or found == layout:
        return ""
    return f" (it looks like {NAMES[found]}: use --layout {found})"
