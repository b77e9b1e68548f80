"""A shard member that declares a huge size is refused before it is decoded (CLI). Trains:
slow tier."""

from __future__ import annotations

import shutil
import struct
import tarfile
from pathlib import Path

import pytest

from tests.e2e.trust_helpers import one_error_line, train_args
from tests.util import cli

pytestmark = pytest.mark.slow


def _declare_huge(tar_path: Path, member_suffix: str) -> str:
    """Patch, in place, the IHDR of the first MEMBER_SUFFIX in the tar to 30000 x 30000.

    Same length, so the shard's size still matches the manifest (only its hash changes, which
    nothing checks when shards are read in place): the attack of issue 15, case 3.
    """
    with tarfile.open(tar_path) as tf:
        info = next(m for m in tf.getmembers() if m.name.endswith(member_suffix))
    with open(tar_path, "r+b") as f:
        f.seek(info.offset_data + 16)
        f.write(struct.pack(">II", 30000, 30000))
    return info.name.split(".")[0]


def test_training_skips_a_decompression_bomb_or_stops_with_one_line(tiny_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)  # patched in place below: never the shared one
    key = _declare_huge(shards / "train-000000.tar", ".image.png")

    r = cli(*train_args(shards, tmp_path / "run1", "train.max_steps=2", "data.on_corrupt=skip"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"skipping corrupt sample {key!r}" in r.stderr
    assert "declares 30000x30000 pixels" in r.stderr

    r = cli(*train_args(shards, tmp_path / "run2", "train.max_steps=2"))
    assert r.returncode == 2, r.stderr[-3000:]
    line = one_error_line(r)
    assert key in line and "declares 30000x30000 pixels" in line
