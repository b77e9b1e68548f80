"""What discovery finds: sample records (one sample's files), problems, and their collection.

Every layout (`layouts.py`, `datasets.py`) fills a `Discovery`; `checks.py`, `folds.py` and
`writer.py` read its `RawSample`s. The types sit below all of them, so no layout module needs
another to name what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from unetdist.data.ingest.readers import list_images


@dataclass(frozen=True)
class RawSample:
    """One sample's files. `id` is the image file stem; `source` is relative to the root."""

    id: str
    split: str  # train | val | test
    image: Path
    label: Path
    fov: Path | None = None  # None: the whole image is the field of view
    label2: Path | None = None  # a second annotator's label
    source: str = ""
    estimate_fov: bool = False  # no FOV file: estimate it from the image (else whole image)
    # a multilabel table's masks, one per label in table order (`label` is the first of them)
    channels: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Problem:
    """A file that cannot be used and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Discovery:
    """Everything one pass over a raw dataset found: samples, problems, notes, broken links."""

    samples: list[RawSample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # non-fatal: printed as warnings
    broken_links: list[Path] = field(default_factory=list)  # skipped: dangling or looping

    def images(self, folder: Path) -> list[Path]:
        """`list_images(folder)`, remembering the symlinks it had to skip."""
        return list_images(folder, self.broken_links)


def relative(path: Path, root: Path) -> str:
    """A record's `source`: `path` relative to the dataset root, or whole when outside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
