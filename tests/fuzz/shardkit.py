"""Sound shard folders to start from, and the edits a mutated copy needs (re-tar, re-hash)."""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from functools import cache
from pathlib import Path

from unetdist.data.manifest import MANIFEST
from unetdist.data.tario import member_info

# train/val/test shards; k-fold train shards + test; A/V classes.png maps (RITE's layout, an
# ignore entry); multi-label channel<c>.png masks (folders, 3 overlapping labels)
KINDS = ("plain", "folds", "av", "labels")
LABELS = ["background=0,0,0", "vessel=255,255,255", "artery=255,0,0", "vein=0,0,255"]


@cache
def base_folder(kind: str) -> Path:
    """A small synthetic shard folder of KIND, built once per process (2-sample shards)."""
    from unetdist.data.classes import ClassTable
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.synth_av import write_synthetic_av, write_synthetic_labels
    from unetdist.data.ingest.writer import shard_dataset

    root = Path(tempfile.mkdtemp(prefix=f"unetdist-fuzz-{kind}-"))
    atexit.register(shutil.rmtree, root, True)
    common = {"n_train": 4, "n_test": 2, "size": (36, 32), "seed": 1, "progress": False}
    opts: dict = {"folds": 2} if kind == "folds" else {"split_val": 0.25}
    if kind == "av":
        raw, layout = write_synthetic_av(root / "raw", **common), "rite"
    elif kind == "labels":
        raw, layout = write_synthetic_labels(root / "raw", **common), "folders"
        opts.update(classes=ClassTable.from_specs(LABELS, mode="multilabel"),
                    test_images="test_images", test_labels="test_labels")
    else:
        raw, layout = write_synthetic(root / "raw", **common), "drive"
    shard_dataset(raw, root / "shards", layout=layout, max_samples=2, progress=False, **opts)
    return root / "shards"


def copy_of(kind: str, dst: Path) -> Path:
    shutil.copytree(base_folder(kind), dst)
    return dst


def read_manifest_dict(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def write_manifest(folder: Path, manifest: object) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest))


def shard_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.tar"))


def read_members(tar: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar) as t:
        return [(m.name, t.extractfile(m).read()) for m in t.getmembers() if m.isfile()]


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar of MEMBERS as `shard` writes them (any names, even hostile ones)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members:
            t.addfile(member_info(name, len(data)), io.BytesIO(data))
    return buf.getvalue()


def split_of(folder: Path, name: str) -> str:
    """The split whose shard list holds NAME."""
    manifest = read_manifest_dict(folder)
    return next(s for s, e in manifest["splits"].items() if any(sh["name"] == name
                                                                for sh in e["shards"]))


def refresh_entry(folder: Path, name: str) -> None:
    """Make the manifest's bytes/sha256 of shard NAME match the file again (when it lists it),
    so that readers get past the copy checks to the members themselves."""
    data = (folder / name).read_bytes()
    manifest = read_manifest_dict(folder)
    for entry in manifest["splits"].values():
        for sh in entry["shards"]:
            if sh["name"] == name:
                sh["bytes"], sh["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    manifest["total_bytes"] = sum(sh["bytes"] for e in manifest["splits"].values()
                                  for sh in e["shards"])
    write_manifest(folder, manifest)
