"""Shard writing and reading: round trip, determinism, tar headers, manifest API, verify."""

import json
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from unetdist.data.codec import decode_sample
from unetdist.data.ingest import writer as shards_mod
from unetdist.data.ingest.readers import read_image, read_mask
from unetdist.data.ingest.synth import write_synthetic
from unetdist.data.ingest.writer import plan_shards, shard_dataset
from unetdist.data.manifest import manifest_hash, read_manifest, shard_paths, verify_shards
from unetdist.errors import DataError

# manifest_hash (every shard's name and sha256) of the small synthetic dataset below. Fixed
# tar headers make it independent of time, user and folder; it pins the generator, the PNG
# encoder and the tar layout. If a library upgrade changes it, check `test_round_trip` still
# passes and update it.
GOLDEN_MANIFEST_HASH = "baef8447f1eff169f2785bd3cfec3bd749b9e64ec4f045c2a32d0a35d8286b08"


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("raw") / "drive", n_train=5, n_test=3,
                           size=(64, 72), seed=0, progress=False)


def _read_split(root, split):
    ds = wds.WebDataset(shard_paths(root, split), shardshuffle=False)
    return [decode_sample(s) for s in ds]


def test_round_trip_is_pixel_identical(drive, tmp_path):
    m = shard_dataset(drive, tmp_path / "s", split_val=0.2, max_samples=2, progress=False)
    assert m["format"] == 1 and m["layout"] == "drive" and m["source"] == str(drive)
    assert {k: v["samples"] for k, v in m["splits"].items()} == {"train": 4, "val": 1, "test": 3}
    assert [len(v["shards"]) for v in m["splits"].values()] == [2, 1, 2]
    assert m["total_bytes"] == sum((tmp_path / "s" / sh["name"]).stat().st_size
                                   for v in m["splits"].values() for sh in v["shards"])
    seen = []
    for split in ("train", "val", "test"):
        samples = _read_split(tmp_path / "s", split)
        keys = [s["key"] for s in samples]
        assert keys == sorted(keys) and len(keys) == m["splits"][split]["samples"]
        for s in samples:
            kind = "training" if s["key"].endswith("training") else "test"
            num = s["key"].split("_")[0]
            folder = drive / kind
            assert np.array_equal(s["image"], read_image(folder / "images" / f"{s['key']}.tif"))
            assert np.array_equal(s["label"], read_mask(folder / "1st_manual" /
                                                        f"{num}_manual1.gif"))
            assert np.array_equal(s["fov"], read_mask(folder / "mask" / f"{s['key']}_mask.gif"))
            assert s["meta"] == {"id": s["key"], "source": f"{kind}/images/{s['key']}.tif",
                                 "split": split, "height": 64, "width": 72,
                                 "fov_source": "file", "fov_diameter": round(
                                     2 * np.sqrt(s["fov"].sum() / np.pi), 1)}
            seen.append(s["key"])
    assert sorted(seen) == sorted(p.stem for p in drive.rglob("*.tif"))
    assert verify_shards(tmp_path / "s") == []


def test_tar_members_order_and_headers(drive, tmp_path):
    shard_dataset(drive, tmp_path / "s", split_val=0, progress=False)
    with tarfile.open(shard_paths(tmp_path / "s", "test")[0]) as tar:
        members = tar.getmembers()
    assert [t.name for t in members[:4]] == ["01_test.image.png", "01_test.label.png",
                                             "01_test.fov.png", "01_test.meta.json"]
    for t in members:
        assert (t.mtime, t.uid, t.gid, t.uname, t.gname, t.mode) == (0, 0, 0, "", "", 0o644)
        assert t.isfile() and not t.pax_headers


def test_output_matches_golden_hash(drive, tmp_path):
    m = shard_dataset(drive, tmp_path / "a", split_val=0.2, max_samples=2, progress=False)
    assert manifest_hash(m) == GOLDEN_MANIFEST_HASH
    # The same bytes from another folder: nothing path- or time-dependent in the shards.
    m2 = shard_dataset(drive, tmp_path / "sub" / "b", split_val=0.2, max_samples=2,
                       progress=False, threads=1)
    assert m2["splits"] == m["splits"]


def test_second_label_is_kept(drive, tmp_path):
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(drive, raw)
    (raw / "test" / "2nd_manual").mkdir()
    second = (np.arange(64 * 72).reshape(64, 72) % 3 == 0).astype(np.uint8)
    Image.fromarray(second * 255).save(raw / "test" / "2nd_manual" / "02_manual2.gif")
    shard_dataset(raw, tmp_path / "s", split_val=0, progress=False)
    test = {s["key"]: s for s in _read_split(tmp_path / "s", "test")}
    assert np.array_equal(test["02_test"]["label2"], second)
    assert "label2" not in test["01_test"]


def test_seed_and_folders_layouts(tmp_path):
    rng = np.random.default_rng(1)
    img = {f"im{i}": rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for i in range(4)}
    lab = {k: (rng.random((30, 40)) > 0.8).astype(np.uint8) for k in img}
    for i, k in enumerate(img):
        split = "Train" if i < 3 else "Test"
        for folder, arr in ((f"seed/{split}_Images", img[k]), (f"seed/{split}_Labels",
                                                               lab[k] * 255)):
            (tmp_path / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(tmp_path / folder / f"{k}.png")
        (tmp_path / "flat" / "x").mkdir(parents=True, exist_ok=True)
        (tmp_path / "flat" / "y").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[k]).save(tmp_path / "flat" / "x" / f"{k}.png")
        Image.fromarray(lab[k]).save(tmp_path / "flat" / "y" / f"{k}_gt.png")  # 0/1 values
    m = shard_dataset(tmp_path / "seed", tmp_path / "s1", layout="seed", split_val=0,
                      progress=False)
    assert {k: v["samples"] for k, v in m["splits"].items()} == {"train": 3, "test": 1}
    m = shard_dataset(tmp_path / "flat", tmp_path / "s2", layout="folders", images="x",
                      labels="y", label_suffix="_gt", split_val=0.25, progress=False)
    assert {k: v["samples"] for k, v in m["splits"].items()} == {"train": 3, "val": 1}
    for root, splits in ((tmp_path / "s1", ("train", "test")), (tmp_path / "s2",
                                                                ("train", "val"))):
        for s in (s for sp in splits for s in _read_split(root, sp)):
            assert np.array_equal(s["image"], img[s["key"]])
            assert np.array_equal(s["label"], lab[s["key"]])
            assert s["fov"].all(), "no FOV in these layouts: all ones"


def test_train_only_dataset(tmp_path):
    raw = write_synthetic(tmp_path / "raw", n_train=3, n_test=0, size=(40, 40), progress=False)
    assert not (raw / "test").exists()
    m = shard_dataset(raw, tmp_path / "s", split_val=0.3, progress=False)
    assert {k: v["samples"] for k, v in m["splits"].items()} == {"train": 2, "val": 1}
    with pytest.raises(DataError, match="split 'test' not in"):
        shard_paths(tmp_path / "s", "test")


def test_plan_and_byte_limit(drive, tmp_path):
    assert plan_shards(18, 16) == [9, 9] and plan_shards(5, 2) == [2, 2, 1]
    assert plan_shards(0, 4) == [] and plan_shards(3, 10) == [3]
    m = shard_dataset(drive, tmp_path / "s", split_val=0, max_bytes=30_000, progress=False)
    for sh in m["splits"]["train"]["shards"]:
        assert sh["bytes"] <= 30_000 or sh["samples"] == 1
    assert sum(sh["samples"] for sh in m["splits"]["train"]["shards"]) == 5
    assert len(m["splits"]["train"]["shards"]) > 1


def test_bad_input_writes_nothing(drive, tmp_path):
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(drive, raw)
    (raw / "training" / "images" / "23_training.tif").write_bytes(b"II*\x00 broken")
    with pytest.raises(DataError, match="23_training.tif: cannot read image"):
        shard_dataset(raw, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_crash_while_writing_leaves_nothing(drive, tmp_path, monkeypatch):
    calls = []

    def failing(s, **kw):
        calls.append(s.id)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(s, **kw)

    real = shards_mod.encode_sample
    monkeypatch.setattr(shards_mod, "encode_sample", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        shard_dataset(drive, tmp_path / "out", progress=False, threads=1)
    assert list(tmp_path.iterdir()) == []


def test_output_checks(drive, tmp_path):
    from unetdist.errors import UserError

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "old").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        shard_dataset(drive, tmp_path / "s", progress=False)
    shard_dataset(drive, tmp_path / "s", progress=False, overwrite=True)
    assert not (tmp_path / "s" / "old").exists() and read_manifest(tmp_path / "s")
    with pytest.raises(UserError, match="contain or replace the source"):
        shard_dataset(drive, drive.parent, progress=False, overwrite=True)
    with pytest.raises(UserError, match="--images, --label-suffix do.* not apply to --layout "
                       "drive"):
        shard_dataset(drive, tmp_path / "t", images="x", label_suffix="_gt", progress=False)
    with pytest.raises(UserError, match=r"--split-val must be in \[0, 1\)"):
        shard_dataset(drive, tmp_path / "t", split_val=1.0, progress=False)
    assert not (tmp_path / "t").exists()


# ----------------------------------------------------------------------------- manifest API


@pytest.fixture(scope="module")
def shard_dir(drive, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "s"
    shard_dataset(drive, out, split_val=0.2, max_samples=2, progress=False)
    return out


def test_shard_paths_and_hash(shard_dir):
    paths = shard_paths(shard_dir, "train")
    assert paths == [str(shard_dir / "train-000000.tar"), str(shard_dir / "train-000001.tar")]
    with pytest.raises(DataError, match="split 'nope' not in .*it has: train, val, test"):
        shard_paths(shard_dir, "nope")
    m = read_manifest(shard_dir)
    h = manifest_hash(m)
    assert len(h) == 64 and h == manifest_hash(json.loads(json.dumps(m)))
    m["splits"]["test"]["shards"][0]["sha256"] = "0" * 64
    assert manifest_hash(m) != h


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format=2), "unsupported format 2"),
    (lambda m: m["splits"]["train"]["shards"][0].update(name="../x.tar"), "bad shard name"),
    (lambda m: m["splits"]["train"].update(samples=99), "says 99 samples"),
    (lambda m: m.update(total_bytes=1), "total_bytes"),
    (lambda m: m["splits"].update(extra=m["splits"]["val"]), "unknown split 'extra'"),
])
def test_read_manifest_rejects_bad_manifests(shard_dir, tmp_path, edit, message):
    m = read_manifest(shard_dir)
    edit(m)
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=message):
        read_manifest(tmp_path)


def test_read_manifest_missing_or_garbage(tmp_path):
    with pytest.raises(DataError, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="invalid JSON"):
        read_manifest(tmp_path)


def test_verify_finds_flipped_byte_truncation_and_missing(shard_dir, tmp_path):
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(shard_dir, copy)
    data = bytearray((copy / "train-000001.tar").read_bytes())
    data[700] ^= 0x01
    (copy / "train-000001.tar").write_bytes(bytes(data))
    with open(copy / "val-000000.tar", "ab") as f:
        f.write(b"\0")
    (copy / "test-000000.tar").unlink()
    problems = verify_shards(copy)
    assert len(problems) == 3
    assert problems[0].startswith("train-000001.tar: sha256")
    assert problems[1].startswith("val-000000.tar:") and "bytes" in problems[1]
    assert problems[2] == "test-000000.tar: missing"
