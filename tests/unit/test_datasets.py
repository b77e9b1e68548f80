"""The public datasets as shipped (format twins): mask rule, layouts, splits, bad input, folds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import twins
from unetdist.data.ingest.layouts import discover
from unetdist.data.ingest.readers import RawFileError, read_mask
from unetdist.data.ingest.synth import synthetic_sample
from unetdist.data.ingest.writer import shard_dataset
from unetdist.errors import DataError, UserError


def _mask(h: int = 20, w: int = 24) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[3:9, 2:15] = 1
    m[12, :] = 1
    return m


# ----------------------------------------------------------------------------- the mask rule


def _gray_png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


MASK_KINDS = {
    "drive_2nd_observer_gif": lambda m, p: twins.palette_gif(
        m, twins.DRIVE_OBSERVER2_PALETTE, p / "m.gif"),
    "mode1_png": lambda m, p: twins.mode1_png(m, p / "m.png"),
    "zero_one_png": lambda m, p: _gray_png(p / "m.png", m),
    "zero_255_png": lambda m, p: _gray_png(p / "m.png", m * 255),
    "two_levels_3_253": lambda m, p: _gray_png(p / "m.png", np.where(m > 0, 253, 3)),
    "rgb_equal_channels_tif": lambda m, p: Image.fromarray(
        np.repeat((m * 255)[..., None], 3, axis=2)).save(p / "m.tif") or p / "m.tif",
}


@pytest.mark.parametrize("kind", sorted(MASK_KINDS))
def test_two_level_masks_are_binary(tmp_path, kind):
    m = _mask()
    path = MASK_KINDS[kind](m, tmp_path)
    if kind == "drive_2nd_observer_gif":  # really decodes to gray 3 / 253, as DRIVE's does
        with Image.open(path) as im:
            assert sorted(np.unique(np.asarray(im.convert("L")))) == [3, 253]
    assert np.array_equal(read_mask(path), m)


def test_three_levels_suggest_binarize_and_binarize_thresholds(tmp_path):
    m = _mask() * 255
    noisy = m.astype(np.int16) + np.where(np.arange(m.size).reshape(m.shape) % 7 == 0, 9, 0)
    path = _gray_png(tmp_path / "m.png", np.clip(noisy, 0, 255))
    with pytest.raises(RawFileError, match=r"not binary: 3 distinct values .*--binarize T"):
        read_mask(path)
    assert np.array_equal(read_mask(path, binarize=127), _mask())


def test_two_dark_levels_are_not_binary(tmp_path):
    with pytest.raises(RawFileError, match="2 distinct values"):
        read_mask(_gray_png(tmp_path / "m.png", _mask() * 100 + 3))


def test_binarize_is_recorded_in_the_manifest(tmp_path):
    raw = twins.make_hrf(tmp_path / "hrf", per_category=6, size=(48, 64))
    label = raw / "manual1" / "01_dr.tif"
    arr = np.asarray(Image.open(label)).copy()
    arr[0, 0] = 200  # a JPEG-damaged label: a third gray level
    Image.fromarray(arr).save(label)
    with pytest.raises(DataError, match=r"01_dr.tif: mask is not binary.*--binarize"):
        shard_dataset(raw, tmp_path / "a", layout="hrf", progress=False)
    m = shard_dataset(raw, tmp_path / "b", layout="hrf", progress=False, binarize=127)
    assert m["binarize"] == 127


# ----------------------------------------------------------------------------- layouts


def _by_split(found) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in found.samples:
        out.setdefault(s.split, []).append(s)
    return out


def test_drive_official_tree(tmp_path):
    found = discover(twins.make_drive(tmp_path / "DRIVE", size=(40, 36)), "drive")
    splits = _by_split(found)
    assert not found.problems and {k: len(v) for k, v in splits.items()} == {"train": 20,
                                                                           "test": 20}
    assert all(s.label2 is not None and s.label2.name == f"{s.id[:2]}_manual2.gif"
               for s in splits["test"])
    assert all(s.label2 is None and s.fov is not None for s in splits["train"])


@pytest.mark.parametrize("repackaged", [False, True])
def test_chase_flat_zip_and_repackaging(tmp_path, repackaged):
    found = discover(twins.make_chase(tmp_path / "CHASE", repackaged, size=(40, 42)), "chase")
    splits = _by_split(found)
    assert not found.problems
    assert [s.id for s in splits["train"]] == twins.chase_ids()[:20]  # 01L..10R
    assert [s.id for s in splits["test"]] == twins.chase_ids()[20:]  # 11L..14R
    assert all(s.fov is None and s.estimate_fov and s.label2.name.endswith("_2ndHO.png")
               for s in found.samples)


def test_stare_only_labelled_gz_and_p5_labels(tmp_path):
    raw = twins.make_stare(tmp_path / "STARE", size=(40, 44))
    assert (raw / "labels-ah" / "im0001.ah.ppm.gz").read_bytes()[:2] == b"\x1f\x8b"
    found = discover(raw, "stare")
    splits = _by_split(found)
    labelled = [f"im{n:04d}" for n in twins.STARE_LABELLED]
    assert not found.problems
    assert [s.id for s in splits["train"]] == labelled[:10]
    assert [s.id for s in splits["test"]] == labelled[10:]
    assert {s.label2.name for s in found.samples} >= {"im0001.vk.ppm.gz", "im0002.vk.ppm"}
    m = read_mask(splits["train"][0].label)  # P5 inside a gzipped .ppm
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}


def test_hrf_per_category_split_and_upper_case_jpg(tmp_path):
    found = discover(twins.make_hrf(tmp_path / "HRF", size=(40, 60)), "hrf")
    splits = _by_split(found)
    assert not found.problems and len(splits["train"]) == 15 and len(splits["test"]) == 30
    for cat in twins.HRF_CATEGORIES:
        assert sorted(s.id for s in splits["train"] if s.id.endswith(f"_{cat}")) == [
            f"{n:02d}_{cat}" for n in range(1, 6)]
    assert any(s.image.suffix == ".JPG" for s in found.samples)


@pytest.mark.parametrize("layout, maker, message, suggested", [
    ("chase", twins.make_drive, "no Image_*.jpg files: is this CHASE_DB1?",
     "DRIVE: use --layout drive"),
    ("stare", twins.make_hrf, "no im*.ppm files: is this STARE?", "HRF: use --layout hrf"),
    ("hrf", twins.make_stare, "no NN_dr/NN_g/NN_h .jpg files: is this HRF?",
     "STARE: use --layout stare"),
    ("drive", twins.make_chase, "no training/ folder: is this DRIVE?",
     "CHASE_DB1: use --layout chase"),
])
def test_wrong_dataset_for_the_layout_suggests_the_right_one(tmp_path, layout, maker, message,
                                                              suggested):
    raw = maker(tmp_path / "raw", size=(36, 36))
    with pytest.raises(DataError) as e:
        shard_dataset(raw, tmp_path / "out", layout=layout, progress=False)
    assert str(e.value).startswith(str(raw))
    assert str(e.value).endswith(f": {message} (it looks like {suggested})")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("maker, want", [
    (twins.make_drive, "drive"), (twins.make_chase, "chase"),
    (lambda root, size: twins.make_chase(root, repackaged=True, size=size), "chase"),
    (twins.make_stare, "stare"), (twins.make_hrf, "hrf"),
    (lambda root, size: (root / "Train_Images").mkdir(parents=True) or root, "seed"),
    (lambda root, size: root.mkdir() or root, None),
])
def test_suggest_layout_names_the_folder_s_dataset(tmp_path, maker, want):
    from unetdist.data.ingest.detect import suggest_layout

    assert suggest_layout(maker(tmp_path / "raw", size=(36, 36))) == want


def test_missing_label_names_the_image(tmp_path):
    raw = twins.make_chase(tmp_path / "CHASE", size=(36, 36))
    (raw / "Image_03R_1stHO.png").unlink()
    with pytest.raises(DataError, match=r"Image_03R.jpg: no 1st observer label"):
        shard_dataset(raw, tmp_path / "out", layout="chase", progress=False)
    assert not (tmp_path / "out").exists()


def test_broken_symlinks_are_skipped_with_one_warning(tmp_path, capsys):
    raw = twins.make_chase(tmp_path / "CHASE", children=11, size=(36, 36))
    os.symlink(raw / "nowhere.jpg", raw / "Image_12L.jpg")  # dangling
    os.symlink(raw / "loop_b.png", raw / "loop_a.png")  # a loop
    os.symlink(raw / "loop_a.png", raw / "loop_b.png")
    m = shard_dataset(raw, tmp_path / "out", layout="chase", progress=False, split_val=0)
    assert m["splits"]["train"]["samples"] == 20 and m["splits"]["test"]["samples"] == 2
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "skipped 3 symlink(s)" in warnings[0]


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose header says w x h and whose pixel data is missing (never decodable)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)  # far too little data for the size the header claims
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path


def test_max_pixels_refuses_from_the_header(tmp_path):
    raw = twins.make_hrf(tmp_path / "HRF", per_category=6, size=(40, 60))
    image = raw / "images" / "02_g.jpg"
    image.unlink()
    _png_header_only(raw / "images" / "02_g.png", 12000, 9000)  # 108 MP: 324 MB decoded
    with pytest.raises(DataError, match=r"02_g.png: image is 12000x9000 = 108.0 MP, over "
                                        r"--max-pixels 64000000"):
        shard_dataset(raw, tmp_path / "out", layout="hrf", progress=False)
    with pytest.raises(DataError, match=r"01_dr.jpg: image is 60x40 .* over --max-pixels 100"):
        shard_dataset(raw, tmp_path / "out", layout="hrf", progress=False, max_pixels=100)


def test_id_in_two_splits(tmp_path):
    for split in ("Train", "Test"):
        (tmp_path / f"{split}_Images").mkdir()
        (tmp_path / f"{split}_Labels").mkdir()
        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / f"{split}_Images/a.png")
        Image.fromarray(_mask() * 255).save(tmp_path / f"{split}_Labels/a.png")
    with pytest.raises(DataError, match=r"sample id 'a' is in both the train and the test"):
        shard_dataset(tmp_path, tmp_path.parent / f"{tmp_path.name}-out", layout="seed",
                      progress=False)


# ----------------------------------------------------------------------------- folds


@pytest.fixture(scope="module")
def fold_shards(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("folds")
    raw = twins.make_drive(root / "DRIVE", n_train=10, n_test=2, size=(40, 36))
    m = shard_dataset(raw, root / "s", progress=False, folds=4, fold_seed=3, max_samples=2)
    return root / "s", m


def test_folds_partition_the_training_samples(fold_shards):
    from unetdist.data.manifest import read_manifest, split_entries
    from unetdist.data.pipeline import count_samples

    path, m = fold_shards
    assert read_manifest(path) == m and "val" not in m["splits"]
    ids = m["folds"]["ids"]
    assert sorted(i for fold in ids for i in fold) == [f"{n}_training" for n in range(21, 31)]
    assert sorted(map(len, ids)) == [2, 2, 3, 3]
    for i in range(4):
        val = {sh["name"] for sh in split_entries(m, "val", i)}
        train = {sh["name"] for sh in split_entries(m, "train", i)}
        assert val == set(m["folds"]["shards"][i]) and not val & train
        assert count_samples(str(path), "val", i) == len(ids[i])
        assert count_samples(str(path), "train", i) == 10 - len(ids[i])
    import tarfile

    for fold, names in enumerate(m["folds"]["shards"]):  # each shard holds one fold only
        for name in names:
            with tarfile.open(path / name) as tar:
                keys = {n.split(".")[0] for n in tar.getnames()}
            assert keys <= set(ids[fold]), (name, fold)


def test_training_stream_never_sees_the_validation_fold(fold_shards):
    from itertools import islice

    from unetdist.config import load_config
    from unetdist.data.pipeline import eval_samples, run_batches

    path, m = fold_shards
    cfg = load_config(None, ["data.crop=16", "data.batch_size=2", "data.num_workers=0",
                             "data.steps_per_epoch=20", "data.fold=2", "data.cache=false"])
    stream = run_batches(cfg.data, str(path), seed=0, rank=0, world_size=1)
    seen = {k for b in islice(stream, 20) for k in b["key"]}  # one epoch
    stream.close()
    held_out = set(m["folds"]["ids"][2])
    assert seen == {i for fold in m["folds"]["ids"] for i in fold} - held_out  # all the others, none of it
    val = [s["key"] for s in eval_samples(cfg.data, str(path), "val", rank=0, world_size=1)]
    assert val == sorted(held_out)


def test_fold_errors(fold_shards, tmp_path):
    from unetdist.config import load_config
    from unetdist.data.pipeline import eval_samples
    from unetdist.errors import ConfigError

    path, _ = fold_shards
    cfg = load_config(None, ["data.fold=7"])
    with pytest.raises(ConfigError, match=r"data.fold must be in \[0, 4\), got 7"):
        eval_samples(cfg.data, str(path), "val", rank=0, world_size=1)
    raw = twins.make_drive(tmp_path / "d", n_train=3, n_test=0, size=(36, 36))
    plain = tmp_path / "plain"
    shard_dataset(raw, plain, progress=False)
    with pytest.raises(ConfigError, match="data.fold=1 but .* has no folds"):
        eval_samples(load_config(None, ["data.fold=1"]).data, str(plain), "val", rank=0,
                     world_size=1)
    with pytest.raises(UserError, match="--split-val does not combine with --folds"):
        shard_dataset(raw, tmp_path / "x", progress=False, folds=2, split_val=0.2)
    with pytest.raises(UserError, match="--folds 5 needs at least 5 training samples"):
        shard_dataset(raw, tmp_path / "x", progress=False, folds=5)


def test_stare_folds_cover_all_labelled_images(tmp_path):
    raw = twins.make_stare(tmp_path / "STARE", unlabelled=0, size=(40, 44))
    m = shard_dataset(raw, tmp_path / "s", layout="stare", progress=False, folds=5)
    assert list(m["splits"]) == ["train"] and m["splits"]["train"]["samples"] == 20
    assert [len(f) for f in m["folds"]["ids"]] == [4] * 5


def test_writer_keeps_only_a_few_samples_in_flight():
    """HRF-sized images: the writer holds at most threads + 1 encoded samples at once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from unetdist.data.ingest.writer import _ordered_map

    lock, state = threading.Lock(), {"made": 0, "used": 0, "peak": 0}

    def encode(i: int) -> int:
        with lock:
            state["made"] += 1
            state["peak"] = max(state["peak"], state["made"] - state["used"])
        return i

    with ThreadPoolExecutor(4) as pool:
        got = []
        for i in _ordered_map(pool, encode, range(200), 5):
            with lock:
                state["used"] += 1
            got.append(i)
    assert got == list(range(200)) and state["peak"] <= 5


@pytest.mark.parametrize("tamper, message", [
    (lambda f: f["shards"][0].append(f["shards"][1][0]), "must partition the train split"),
    (lambda f: f["shards"][0].clear(), "must partition the train split"),
    (lambda f: f["ids"][0].append(f["ids"][1][0]), "non-empty and disjoint"),
    (lambda f: f.update(k=1), "k >= 2"),
])
def test_tampered_folds_are_rejected(fold_shards, tmp_path, tamper, message):
    from unetdist.data.manifest import read_manifest

    m = json.loads(json.dumps(fold_shards[1]))
    tamper(m["folds"])
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=message):
        read_manifest(tmp_path)


def test_chase_repackaging_with_fov_masks_uses_them(tmp_path):
    raw = twins.make_chase(tmp_path / "CHASE", repackaged=True, children=11, size=(40, 42))
    (raw / "mask").mkdir()
    for i, stem in enumerate(twins.chase_ids(11)):
        fov = synthetic_sample(i, split="train", seed=16, size=(40, 42)).fov
        name = f"{stem}_mask.png" if i % 2 else f"{stem}.png"  # both namings are seen
        Image.fromarray(fov * 255).save(raw / "mask" / name)
    m = shard_dataset(raw, tmp_path / "s", layout="chase", progress=False, split_val=0)
    assert m["fov_source"] == "file" and m["fov_sources"] == {"file": 22}
    (raw / "mask" / "Image_02L.png").unlink()
    with pytest.raises(DataError, match=r"Image_02L.jpg: no FOV mask in .*mask"):
        shard_dataset(raw, tmp_path / "t", layout="chase", progress=False)
