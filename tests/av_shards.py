"""Multi-class (artery/vein) shard folders for tests of the training and evaluation paths.

Written straight from `synth_av` samples in the shard contract of issue 25 (a `classes` table in
the manifest, `<id>.classes.png` class-index labels, 255 = uncertain), so those tests need not
wait on any one raw layout's reader.
"""

from __future__ import annotations

import json
from pathlib import Path

from unetdist.data.classes import ClassTable
from unetdist.data.codec import IGNORE, encode_classes, encode_mask, encode_png
from unetdist.data.ingest.fov import fov_diameter
from unetdist.data.ingest.synth_av import synthetic_av_sample
from unetdist.data.tario import TarShard

AV_SPECS = ["background=0,0,0", "artery=255,0,0", "vein=0,0,255", "crossing=0,255,0",
            "uncertain=255,255,255:ignore"]


def av_table() -> ClassTable:
    return ClassTable.from_specs(AV_SPECS)


def _members(key: str, split: str, index: int, seed: int, size: tuple[int, int]
             ) -> tuple[list[tuple[str, bytes]], float]:
    s = synthetic_av_sample(index, split="test" if split == "test" else "train", seed=seed,
                            size=size)
    labels = s.labels.copy()
    labels[s.uncertain > 0] = IGNORE
    diameter = round(fov_diameter(s.fov), 1)
    meta = {"id": key, "source": f"synth-av/{key}", "split": split, "height": size[0],
            "width": size[1], "fov_source": "file", "fov_diameter": diameter}
    return [(f"{key}.image.png", encode_png(s.image)), (f"{key}.classes.png",
                                                         encode_classes(labels)),
            (f"{key}.fov.png", encode_mask(s.fov)),
            (f"{key}.meta.json", json.dumps(meta).encode())], diameter


def av_shards(root: Path, *, n_train: int = 4, n_val: int = 2, n_test: int = 2, seed: int = 0,
              size: tuple[int, int] = (96, 96)) -> Path:
    """ROOT/shards: one shard per split, K=4 classes (background, artery, vein, crossing) and
    an ignore entry (uncertain, 255)."""
    out = Path(root) / "shards"
    out.mkdir(parents=True)
    splits, total, diameters = {}, 0, {}
    for split, n, first in (("train", n_train, 0), ("val", n_val, n_train), ("test", n_test, 0)):
        if not n:
            continue
        shard = TarShard(out / f"{split}-000000.tar")
        for i in range(first, first + n):
            members, diameters[split] = _members(f"{i + 1:02d}_{split}", split, i, seed, size)
            shard.add(members)
        nbytes, digest = shard.close()
        total += nbytes
        splits[split] = {"samples": n, "shards": [{"name": shard.path.name, "bytes": nbytes,
                                                   "sha256": digest, "samples": n}]}
    n_all = n_train + n_val + n_test
    manifest = {"format": 1, "layout": "rite", "source": "synth-av", "binarize": None,
                "splits": splits, "total_bytes": total, "fov_source": "file",
                "fov_sources": {"file": n_all}, "fov_diameter": diameters,
                "classes": av_table().to_manifest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out
