"""`unetdist synth`, `unetdist shard` and `unetdist shard --verify` as a user runs them."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.util import cli


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw") / "drive"
    r = cli("synth", out, "--n-train", 4, "--n-test", 2, "--size", "64x72", "--seed", 3)
    assert r.returncode == 0, r.stderr
    assert "wrote 6 synthetic images (4 train, 2 test, 64x72, seed 3)" in r.stdout
    assert "synth" in r.stderr  # the progress bar
    return out


def test_shard_then_verify_then_tamper(raw, tmp_path):
    out = tmp_path / "shards"
    r = cli("shard", raw, out, "--layout", "drive", "--split-val", "0.25", "--max-samples", 2)
    assert r.returncode == 0, r.stderr
    summary = r.stdout.strip().splitlines()[-1]
    assert summary.startswith("wrote 6 samples (train 3, val 1, test 2) in 4 shards, ")
    assert " bytes (" in summary and " s -> " in summary
    assert "sharding: 6/6 img (" in r.stderr  # the progress bar, as full lines in a log
    assert "\r" not in r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["total_bytes"] == sum(p.stat().st_size for p in out.glob("*.tar"))

    r = cli("shard", "--verify", out)
    assert r.returncode == 0 and r.stdout.startswith("ok: 4 shards"), r.stderr
    shard = out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[1234] ^= 0x80
    shard.write_bytes(bytes(data))
    r = cli("shard", "--verify", out)
    assert r.returncode == 1
    assert "mismatch: train-000001.tar: sha256" in r.stderr
    assert "train-000000.tar" not in r.stderr


def _copy(raw, tmp_path):
    dst = tmp_path / "raw"
    shutil.copytree(raw, dst)
    return dst


def _missing_label(d):
    (d / "training" / "1st_manual" / "22_manual1.gif").unlink()
    return "training/images/22_training.tif: no label"


def _size_mismatch(d):
    Image.fromarray(np.zeros((64, 70), np.uint8)).save(d / "test" / "mask" / "02_test_mask.gif")
    return "test/mask/02_test_mask.gif: FOV mask is 64x70 (HxW) but image 02_test.tif is 64x72"


def _non_binary(d):
    arr = np.zeros((64, 72), np.uint8)
    arr[:10] = 128
    arr[10:20] = 255
    Image.fromarray(arr).save(d / "training" / "1st_manual" / "21_manual1.gif")
    return "training/1st_manual/21_manual1.gif: mask is not binary: 3 distinct values (0, 128, 255)"


def _corrupt(d):
    p = d / "training" / "images" / "24_training.tif"
    p.write_bytes(p.read_bytes()[:300])
    return "training/images/24_training.tif: cannot read image"


def _empty(d):
    for p in (d / "test" / "images").iterdir():
        p.unlink()
    return "test/images: no image files"


@pytest.mark.parametrize("damage", [_missing_label, _size_mismatch, _non_binary, _corrupt,
                                    _empty])
def test_bad_input_exits_2_names_file_writes_nothing(raw, tmp_path, damage):
    src = _copy(raw, tmp_path)
    expected = damage(src)
    r = cli("shard", src, tmp_path / "out", "--layout", "drive")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "problem" in r.stderr and "nothing was written" in r.stderr
    assert f"{src}/{expected}" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"], "something was written"


def test_all_problems_reported_with_a_count(tmp_path):
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "labels").mkdir()
    for i in range(25):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "src" / "images" /
                                                            f"i{i:02d}.png")
    r = cli("shard", tmp_path / "src", tmp_path / "out", "--layout", "folders")
    assert r.returncode == 2
    lines = r.stderr[r.stderr.index("error: "):].splitlines()
    assert lines[0].startswith("error: 25 problems in")
    assert sum("no label" in line for line in lines) == 20
    assert lines[-1].strip() == "... and 5 more"
    assert not (tmp_path / "out").exists()


def test_empty_source_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    r = cli("shard", tmp_path / "empty", tmp_path / "out", "--layout", "drive")
    assert r.returncode == 2 and "empty: no training/ folder: is this DRIVE?" in r.stderr
    r = cli("shard", tmp_path / "nope", tmp_path / "out")
    assert r.returncode == 2 and "source folder not found" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_verify_without_manifest_and_usage_errors(tmp_path):
    r = cli("shard", "--verify", tmp_path)
    assert r.returncode == 2 and "no manifest.json" in r.stderr
    r = cli("shard", tmp_path)
    assert r.returncode == 2 and "usage" in r.stderr
    r = cli("synth", tmp_path / "x", "--size", "16x16")
    assert r.returncode == 2 and ">= 32" in r.stderr


def test_real_dataset_layouts_refuse_bad_input_in_one_line(raw, tmp_path):
    """The console script: wrong dataset for the layout, --max-pixels, --binarize bounds."""
    r = cli("shard", raw, tmp_path / "out", "--layout", "chase", "--quiet")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"error: {raw}: no Image_*.jpg files: is this CHASE_DB1? (it looks "
                        "like DRIVE: use --layout drive)\n")
    r = cli("shard", raw, tmp_path / "out", "--max-pixels", "1000", "--quiet")
    assert r.returncode == 2
    assert "21_training.tif: image is 72x64 = 0.0 MP, over --max-pixels 1000" in r.stderr
    r = cli("shard", raw, tmp_path / "out", "--binarize", "300", "--quiet")
    assert r.returncode == 2 and r.stderr == "error: --binarize must be in [0, 255), got 300.0\n"
    assert not (tmp_path / "out").exists()
