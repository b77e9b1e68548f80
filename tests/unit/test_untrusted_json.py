"""Issue 24 cases 5 and 6: hostile JSON in shard folders is one `error:` line, never a traceback,
and meta.json sizes are typed before anything (OpenCV) uses them."""

from __future__ import annotations

import json
import os

import pytest

from tests.fuzz import shardkit
from tests.fuzz.mutate import nesting_bomb
from unetdist.cli import main
from unetdist.config import DataConfig
from unetdist.data import jsonsafe
from unetdist.data.manifest import read_manifest
from unetdist.data.pipeline import eval_samples
from unetdist.data.reader import SampleCache, fill_cache, split_shards
from unetdist.errors import DataError

BOMB = nesting_bomb(200_000)  # the drill's manifest
META_BOMB = nesting_bomb(20_000)  # within meta.json's size limit, far past the depth limit


@pytest.fixture
def shards(tmp_path):
    return shardkit.copy_of("plain", tmp_path / "shards")


def _one_error_line(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _set_meta(folder, split: str, meta: bytes | dict) -> str:
    """Replace the meta.json of the first sample of SPLIT's first shard; returns its key."""
    name = next(sh["name"] for sh in shardkit.read_manifest_dict(folder)["splits"][split]["shards"])
    members = shardkit.read_members(folder / name)
    i = next(i for i, (n, _) in enumerate(members) if n.endswith(".meta.json"))
    if isinstance(meta, dict):
        meta = json.dumps({**json.loads(members[i][1]), **meta}).encode()
    members[i] = (members[i][0], meta)
    (folder / name).write_bytes(shardkit.tar_bytes(members))
    shardkit.refresh_entry(folder, name)
    return members[i][0].split(".")[0]


# ----------------------------------------------------------------------- case 5: nesting bombs


def test_a_manifest_bomb_is_one_line_naming_the_file(shards, capsys):
    (shards / "manifest.json").write_bytes(BOMB)
    with pytest.raises(DataError, match="manifest.json: JSON nested more than"):
        read_manifest(shards)  # what train and evaluate call first
    assert "manifest.json" in _one_error_line(capsys, "shard", "--verify", str(shards))
    line = _one_error_line(capsys, "stage", str(shards), str(shards.parent / "local"), "--quiet")
    assert "manifest.json" in line
    assert not (shards.parent / "local" / "manifest.json").exists()


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_meta_json_bomb_is_a_bad_sample_for_train_and_evaluate(shards, split):
    key = _set_meta(shards, split, META_BOMB)
    cfg = DataConfig(on_corrupt="error")
    with pytest.raises(DataError, match=f"'{key}'.*meta.json: JSON nested more than"):
        if split == "train":
            fill_cache(split_shards(str(shards), "train"), cfg, SampleCache())
        else:
            list(eval_samples(cfg, str(shards), "test", rank=0, world_size=1))
    skip = DataConfig(on_corrupt="skip")
    bad = fill_cache(split_shards(str(shards), split), skip, SampleCache())
    assert [b[0] for b in bad] == [key]


# ----------------------------------------------------------------------- case 6: typed sizes


@pytest.mark.parametrize("width", ["60000", 1e300, 36.0, True, 0, -36, None, [36]])
def test_meta_sizes_of_the_wrong_type_never_reach_opencv(shards, width):
    key = _set_meta(shards, "test", {"width": width})
    with pytest.raises(DataError, match=f"'{key}'.*meta.json width .*expected positive integers"):
        list(eval_samples(DataConfig(on_corrupt="error"), str(shards), "test", rank=0,
                          world_size=1))
    kept = list(eval_samples(DataConfig(on_corrupt="skip"), str(shards), "test", rank=0,
                             world_size=1))
    assert key not in [s["key"] for s in kept] and kept
    for s in kept:  # what evaluate resizes predictions back to: the image's own size
        assert (s["meta"]["height"], s["meta"]["width"]) == s["rgb"].shape[:2]


def test_meta_sizes_over_the_pixel_bound_are_refused(shards):
    _set_meta(shards, "test", {"width": 60000, "height": 60000})
    with pytest.raises(DataError, match="60000x60000 pixels, more than the 64000000 allowed"):
        list(eval_samples(DataConfig(), str(shards), "test", rank=0, world_size=1))


# ----------------------------------------------------------------------- the bounded parser


def test_jsonsafe_refuses_constants_size_and_fifos(tmp_path):
    with pytest.raises(DataError, match="x: invalid JSON"):
        jsonsafe.loads(b'{"a": NaN}', "x", max_bytes=100)
    with pytest.raises(DataError, match="more than the 10 allowed"):
        jsonsafe.loads(b"[" + b"1," * 20 + b"1]", "x", max_bytes=10)
    assert jsonsafe.loads(nesting_bomb(jsonsafe.MAX_DEPTH), "x", max_bytes=10**6)
    with pytest.raises(DataError, match="nested more than"):
        jsonsafe.loads(nesting_bomb(jsonsafe.MAX_DEPTH + 1, "{"), "x", max_bytes=10**6)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(DataError, match="not a regular file"):
        jsonsafe.read(tmp_path / "fifo", max_bytes=100)  # never blocks waiting for a writer


def test_manifest_members_are_typed(shards):
    m = shardkit.read_manifest_dict(shards)
    for bad in ({"fov_diameter": {"train": "wide"}}, {"total_bytes": float(m["total_bytes"])},
                {"format": True}):
        shardkit.write_manifest(shards, {**m, **bad})
        with pytest.raises(DataError, match="manifest.json"):
            read_manifest(shards)
