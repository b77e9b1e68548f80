"""Training on multi-class shards (issue 25 item 3): the packed label byte, batches of class
indices with ignore 255, crop_class_bias, the trainer's class-table checks; binary unchanged.

References are independent of the code under test: the shard members decoded straight from the
tar with OpenCV, numpy bit arithmetic, OpenCV's nearest-neighbour resize, and a hash of binary
batches taken before the packing changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.av_shards import av_shards
from tests.unit.test_pipeline import make_sample, write_shards
from tests.util import cli
from unetdist.config import AugConfig, DataConfig
from unetdist.data.augment import train_view
from unetdist.data.codec import encode_classes
from unetdist.data.pipeline import run_batches
from unetdist.data.preprocess import (
    FOV_SHIFT,
    LABEL_BITS,
    pack_masks,
    prepare,
    rescaled,
    unpack_masks,
)
from unetdist.data.reader import CACHE, decode_checked, iter_raw, prep_key, split_shards
from unetdist.data.tario import TarShard
from unetdist.errors import DataError

AV_VALUES = {0, 1, 2, 3, 255}
CROSSING = 3  # the rarest class of av_shards (~0.6% of the pixels; artery, vein ~5% each)


@pytest.fixture(scope="module")
def av_root(tmp_path_factory) -> Path:
    return av_shards(tmp_path_factory.mktemp("av"), n_train=4, n_val=0, n_test=0)


def _members(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """key -> {'classes', 'fov'} read from the train tar with tarfile + cv2 (not our reader)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with tarfile.open(root / "train-000000.tar") as tar:
        for m in tar.getmembers():
            key, member = m.name.split(".", 1)
            if member in ("classes.png", "fov.png"):
                data = np.frombuffer(tar.extractfile(m).read(), np.uint8)
                img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
                out.setdefault(key, {})[member[:-4]] = img if member == "classes.png" else (
                    img > 127).astype(np.uint8)
    return out


def _decoded(root: Path) -> list[dict]:
    return [decode_checked(r, "error")[0] for s in split_shards(str(root), "train")
            for r in iter_raw(s)]


# ----------------------------------------------------------------------------- the packed byte


def test_pack_unpack_round_trip_keeps_every_class_and_ignore():
    rng = np.random.default_rng(0)
    values = np.array([*range(127), 255], np.uint8)  # every class index the byte holds + ignore
    label = rng.choice(values, size=(64, 80)).astype(np.uint8)
    label.flat[:values.size] = values  # each value at least once
    fov = (rng.random((64, 80)) < 0.7).astype(np.uint8)
    packed = pack_masks(label, fov)
    # the layout by plain bit arithmetic: class in the low 7 bits, ignore as 127, FOV in bit 7
    low = np.where(label == 255, 127, label).astype(np.uint8)
    assert np.array_equal(packed, low | (fov << 7)) and FOV_SHIFT == 7 and LABEL_BITS == 127
    got_label, got_fov = unpack_masks(packed)
    assert np.array_equal(got_label, label) and np.array_equal(got_fov, fov)
    assert got_label.dtype == got_fov.dtype == np.uint8


def test_binary_masks_pack_to_the_same_label_and_fov():
    label = (np.random.default_rng(1).random((30, 40)) < 0.3).astype(np.uint8)
    fov = np.zeros_like(label)
    fov[5:25, 5:35] = 1
    got = unpack_masks(pack_masks(label, fov))
    assert np.array_equal(got[0], label) and np.array_equal(got[1], fov)


@pytest.mark.parametrize("bad", [127, 128, 200, 254])
def test_a_class_index_the_byte_cannot_hold_is_one_data_error(bad):
    label = np.zeros((8, 8), np.uint8)
    label[2, 3] = bad
    with pytest.raises(DataError, match=rf"^sample 'k7': label values \[{bad}\] are neither a "
                                        r"class index 0\.\.126 nor the ignore value 255$"):
        pack_masks(label, np.ones_like(label), "k7")


def _with_bad_class_value(src: Path, dst: Path, key: str, value: int) -> Path:
    """A copy of shard folder SRC whose sample KEY has one label pixel = VALUE."""
    shutil.copytree(src, dst)
    grouped: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(src / "train-000000.tar") as tar:
        for m in tar.getmembers():
            grouped.setdefault(m.name.split(".", 1)[0], []).append(
                (m.name, tar.extractfile(m).read()))
    shard = TarShard(dst / "train-000000.tar")
    for k, members in grouped.items():
        if k == key:
            name, data = next(x for x in members if x[0].endswith(".classes.png"))
            label = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            label[0, 0] = value
            members = [(n, encode_classes(label) if n == name else b) for n, b in members]
        shard.add(members)
    nbytes, digest = shard.close()
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0].update(bytes=nbytes, sha256=digest)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize("cache, value", [(True, 200), (False, 200), (True, 9)])
def test_a_label_value_outside_the_table_follows_data_on_corrupt(av_root, tmp_path, cache, value):
    """200: more than the packed byte holds; 9: a class index the 4-class table lacks (it would
    reach the loss as an out-of-range target)."""
    bad = _with_bad_class_value(av_root, tmp_path / "bad", "02_train", value)
    kw = {"crop": 24, "batch_size": 2, "num_workers": 0, "steps_per_epoch": 4, "cache": cache}
    CACHE.clear()
    with pytest.raises(DataError, match=rf"^sample '02_train' in .*: label values \[{value}\] "
                                        "are not in the shards' table \\(4 classes"):
        list(islice(run_batches(DataConfig(**kw), str(bad), seed=0, rank=0, world_size=1), 4))
    CACHE.clear()
    batches = list(islice(run_batches(DataConfig(on_corrupt="skip", **kw), str(bad), seed=0,
                                      rank=0, world_size=1), 4))
    keys = {k for b in batches for k in b["key"]}
    assert keys == {"01_train", "03_train", "04_train"}


def test_the_cache_key_carries_the_packing_version():
    """A cache keyed like before the change (5 config fields) cannot serve the new layout."""
    key = prep_key(DataConfig())
    assert len(key) == 6 and key[0] == 2 and key[1:] == ("green", False, 1.0, "zscore", 1.0)


def test_rescaled_class_maps_are_nearest_neighbour_and_binary_masks_unchanged(av_root):
    d = _decoded(av_root)[0]
    assert set(np.unique(d["label"]).tolist()) == AV_VALUES
    for factor in (0.5, 0.73, 1.6):
        out = rescaled(d, factor)
        size = out["image"].shape[1::-1]
        want = cv2.resize(d["label"], size, interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(out["label"], want)
        # the FOV (binary) keeps the smooth resize + threshold binary shards always had
        interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
        soft = cv2.resize(d["fov"].astype(np.float32), size, interpolation=interp)
        assert np.array_equal(out["fov"], (soft >= 0.5).astype(np.uint8))
    prep = prepare(d, DataConfig(scale=0.5))
    assert set(np.unique(unpack_masks(prep.masks)[0]).tolist()) <= AV_VALUES


# ----------------------------------------------------------------------------- batches


def test_full_image_batches_equal_the_shards_class_maps_and_fovs(av_root):
    """No augmentation, full images: the batch is the members' pixels, ignore as 255."""
    ref = _members(av_root)
    cfg = DataConfig(crop=0, batch_size=2, num_workers=0, steps_per_epoch=4,
                     aug=AugConfig(enabled=False))
    CACHE.clear()
    seen = set()
    for b in islice(run_batches(cfg, str(av_root), seed=0, rank=0, world_size=1), 4):
        assert b["label"].dtype == b["fov"].dtype == torch.uint8
        for i, key in enumerate(b["key"]):
            assert np.array_equal(b["label"][i, 0].numpy(), ref[key]["classes"]), key
            assert np.array_equal(b["fov"][i, 0].numpy(), ref[key]["fov"]), key
            seen.add(key)
    assert seen == set(ref)


@pytest.mark.parametrize("workers", [0, 1])
def test_augmented_batches_hold_classes_and_ignore_with_their_own_fov(av_root, workers):
    """Rotated, zoomed, elastic crops: only the table's values, and every (label, fov) pixel
    pair is one the shards hold (or the black border's (0, 0)): no class moved off its FOV."""
    ref = _members(av_root)
    pairs = {(0, 0)}
    for r in ref.values():
        pairs |= set(zip(r["classes"].ravel().tolist(), r["fov"].ravel().tolist()))
    cfg = DataConfig(crop=40, batch_size=4, num_workers=workers, steps_per_epoch=6,
                     aug=AugConfig(rotate_deg=40.0, scale=0.3, elastic=0.5))
    CACHE.clear()
    values: set[int] = set()
    for b in islice(run_batches(cfg, str(av_root), seed=2, rank=0, world_size=1), 6):
        lab, fov = b["label"].numpy().ravel(), b["fov"].numpy().ravel()
        values |= set(np.unique(lab).tolist())
        code = np.unique(lab.astype(np.int64) * 2 + fov)
        assert {(int(c) // 2, int(c) % 2) for c in code} <= pairs
    assert values <= AV_VALUES and {1, 2, 3, 255} <= values  # ignore reaches the batches


# Binary batches must not change with the packing. Obtained on main at d660c80 (before the
# packing change) with exactly `_binary_digest` below: sha256 over image, label and FOV bytes of
# 4 batches of rank 0 of 1 and of rank 1 of 2, first 16 hex digits.
BINARY_DIGESTS = {"crop_cached_elastic": "92c1666fd08b6f63", "scaled_uncached": "243f8600efa3e1a4",
                  "full_image_rgb": "3cd6fe6bb2c1ecfd"}
BINARY_CONFIGS = {
    "crop_cached_elastic": {"crop": 32, "cache": True,
                            "aug": AugConfig(elastic=0.5, rotate_deg=30.0)},
    "scaled_uncached": {"crop": 24, "scale": 0.7, "cache": False, "crop_in_fov": 0.5},
    "full_image_rgb": {"crop": 0, "channels": "rgb", "cache": True,
                       "aug": AugConfig(enabled=False)},
}


def _binary_digest(root: Path, kw: dict) -> str:
    cfg = DataConfig(batch_size=3, num_workers=0, steps_per_epoch=3, shuffle_buffer=4, **kw)
    h = hashlib.sha256()
    for rank, world in ((0, 1), (1, 2)):
        CACHE.clear()
        for b in islice(run_batches(cfg, str(root), seed=5, rank=rank, world_size=world), 4):
            for k in ("image", "label", "fov"):
                h.update(b[k].numpy().tobytes())
    return h.hexdigest()[:16]


def test_binary_batches_are_byte_identical_to_before_the_change(tmp_path):
    write_shards(tmp_path, {"train": [make_sample(f"s{i:02d}", seed=i) for i in range(7)]},
                 per_shard=3)
    got = {name: _binary_digest(tmp_path, kw) for name, kw in BINARY_CONFIGS.items()}
    assert got == BINARY_DIGESTS


# ----------------------------------------------------------------------------- crop_class_bias


def _crop_shares(av_root: Path, p: float, crop: int = 16, n: int = 300) -> tuple[float, list]:
    """(share of augmented crops holding a crossing pixel, centre-pixel class counts of
    un-augmented crops) at crop_class_bias=P."""
    samples = _decoded(av_root)
    cfg = DataConfig(crop=crop, crop_class_bias=p)
    preps = [prepare(s, cfg) for s in samples]
    hits = sum(bool((train_view(preps[i % len(preps)], cfg, np.random.default_rng(i))[1]
                     == CROSSING).any()) for i in range(n))
    plain = DataConfig(crop=crop, crop_class_bias=p, aug=AugConfig(enabled=False))
    centre = np.zeros(256, int)
    for i in range(n):
        centre[train_view(preps[i % len(preps)], plain, np.random.default_rng(i))[1][
            crop // 2, crop // 2]] += 1
    return hits / n, centre[[0, 1, 2, 3]].tolist()


def test_crop_class_bias_raises_the_share_of_crops_with_the_rarest_class(av_root,
                                                                         record_property):
    counts = sum(np.bincount(s["label"].ravel(), minlength=256) for s in _decoded(av_root))
    assert int(np.argmin(counts[1:4])) + 1 == CROSSING  # the rarest foreground class
    share0, centre0 = _crop_shares(av_root, 0.0)
    share1, centre1 = _crop_shares(av_root, 1.0)
    record_property("crossing_share", {"p=0": share0, "p=1": share1})
    # measured: 0.46 -> 0.78 of 16-px crops hold a crossing pixel
    assert share1 > share0 + 0.2, (share0, share1)
    # p=1: the centre is a pixel of a class drawn uniformly among the 3 foreground classes
    # (background only where the window was clipped at the image edge); p=0: mostly background
    n = sum(centre1)
    assert centre1[0] < 0.1 * n and all(0.22 * n < c < 0.45 * n for c in centre1[1:]), centre1
    assert centre0[CROSSING] < 0.05 * n and centre0[0] > 0.7 * n, centre0


def test_crop_class_bias_zero_draws_nothing_and_a_classless_image_falls_back(av_root):
    d = _decoded(av_root)[0]
    cfg0, cfg1 = DataConfig(crop=24), DataConfig(crop=24, crop_class_bias=1.0)
    prep = prepare(d, cfg0)
    a, b = (train_view(prep, cfg0, np.random.default_rng(4)) for _ in range(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    empty = prepare(dict(d, label=np.zeros_like(d["label"])), cfg1)  # background only
    x = train_view(empty, cfg1, np.random.default_rng(4))
    assert x[0].shape == (1, 24, 24) and not x[1].any()


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_crop_class_bias_outside_0_1_is_one_line_naming_the_field(tmp_path, value):
    r = cli("train", "--check", f"data.crop_class_bias={value}", f"data.shared_dir={tmp_path}")
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert err[0].startswith("error: data.crop_class_bias must be in [0, 1], got "), err


# ----------------------------------------------------------------------------- trainer checks

GOOD = ["model.num_classes=4", "loss.name=ce_dice", "loss.ignore_index=255"]


def _check(root: Path, run_dir: Path, *args: str) -> tuple[int, list[str]]:
    r = cli("train", "--check", f"data.shared_dir={root}", f"train.run_dir={run_dir}", *args)
    return r.returncode, [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] or [
        r.stdout.strip()]


AV_NAMES = "the shards' classes background, artery, vein, crossing"


@pytest.mark.parametrize("args, line", [
    (["model.num_classes=2", "loss.name=ce_dice"],
     f"model.num_classes must be 4 for {AV_NAMES}, got 2"),
    (["model.num_classes=3", "loss.name=ce", "loss.ignore_index=255"],
     f"model.num_classes must be 4 for {AV_NAMES}, got 3"),
    (["model.num_classes=4", "loss.name=multilabel_bce_dice", "loss.ignore_index=255"],
     f"loss.name must be ce or ce_dice for {AV_NAMES}, got 'multilabel_bce_dice'"),
    (["model.num_classes=4", "loss.name=ce_dice"],
     "loss.ignore_index must be 255 for the shards' ignore entry 'uncertain', got None"),
    (["model.num_classes=4", "loss.name=ce", "loss.ignore_index=0"],
     "loss.ignore_index must be 255 for the shards' ignore entry 'uncertain', got 0"),
])
def test_train_check_refuses_a_model_or_loss_that_does_not_fit_the_classes(av_root, tmp_path,
                                                                           args, line):
    rc, out = _check(av_root, tmp_path / "run", *args)
    assert rc == 2 and out == [f"error: {line}"]


def test_train_check_accepts_the_classes_right_and_binary_shards_as_before(av_root, tmp_path):
    rc, out = _check(av_root, tmp_path / "run", *GOOD)
    assert rc == 0 and out[0].startswith("ok: config valid"), out
    binary = tmp_path / "binary"
    write_shards(binary, {"train": [make_sample("s00")]})
    for args in ([], ["model.num_classes=2", "loss.name=ce_dice"]):  # sigmoid; 2-class softmax
        rc, out = _check(binary, tmp_path / "run2", *args)
        assert rc == 0 and out[0].startswith("ok: config valid"), (args, out)


def test_a_binary_config_takes_its_outputs_and_loss_from_the_classes(av_root, tmp_path):
    """model.out_channels follows the table: the defaults (one sigmoid output) are replaced,
    said in one line, and the run folder's config holds what training will use."""
    r = cli("train", "--check", f"data.shared_dir={av_root}", f"train.run_dir={tmp_path / 'r'}")
    assert r.returncode == 0, r.stderr
    assert ("model.num_classes=4, loss.name=ce_dice, loss.ignore_index=255: from the shards' "
            "4 classes (multiclass): background, artery, vein, crossing") in r.stdout + r.stderr
    r = cli("train", "--check", f"data.shared_dir={av_root}", f"train.run_dir={tmp_path / 'r'}",
            "loss.name=bce")  # no Dice term asked for: plain cross-entropy
    assert "loss.name=ce," in r.stdout + r.stderr


def test_a_multilabel_table_needs_the_multilabel_loss_in_one_line(av_root, tmp_path):
    root = tmp_path / "ml"
    shutil.copytree(av_root, root)
    manifest = json.loads((root / "manifest.json").read_text())
    table = manifest["classes"]
    manifest["classes"] = dict(table, mode="multilabel", ignore=None)
    (root / "manifest.json").write_text(json.dumps(manifest))
    rc, out = _check(root, tmp_path / "run", "model.num_classes=3", "loss.name=ce_dice")
    want = ("error: loss.name must be multilabel_bce_dice for the shards' labels artery, vein, "
            "crossing, got 'ce_dice'")
    assert rc == 2 and out == [want], out
    rc, out = _check(root, tmp_path / "run", "model.num_classes=4",
                     "loss.name=multilabel_bce_dice")
    want = ("error: model.num_classes must be 3 for the shards' labels artery, vein, crossing, "
            "got 4")
    assert rc == 2 and out == [want], out
