"""Multi-class ingest (issue 25 item 2): RITE and colour/index-mask folders -> classes.png
shards, checked against the synthetic twins' own label maps and numpy references."""

import json
import tarfile

import cv2
import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from tests.twins import RITE_AV_COLOURS, av_rgb, make_av_jpeg_folders, make_rite
from unetdist.data.classes import IGNORE_INDEX, ClassTable
from unetdist.data.codec import decode_sample
from unetdist.data.ingest.detect import layout_hint, suggest_layout
from unetdist.data.ingest.readers import read_class_mask, read_image
from unetdist.data.ingest.synth_av import synthetic_av_sample
from unetdist.data.ingest.writer import classes_summary, shard_dataset
from unetdist.data.manifest import read_manifest, shard_paths, verify_shards
from unetdist.errors import DataError, UserError

SIZE = (96, 88)
AV = ClassTable.of([(k, RITE_AV_COLOURS[k]) for k in ("background", "artery", "vein",
                                                       "crossing")])
RITE_TABLE = ClassTable.of(list(zip(AV.names, map(tuple, AV.colours.tolist()))),
                           ("uncertain", RITE_AV_COLOURS["uncertain"]))


def _twin(i, split="train"):
    """The twins' sample i (tests/twins.py renders them with seed 16)."""
    return synthetic_av_sample(i, split=split, seed=16, size=SIZE)


def _decoded(root):
    m = read_manifest(root)
    out = {}
    for split in m["splits"]:
        for s in wds.WebDataset(shard_paths(root, split), shardshuffle=False):
            out[s["__key__"]] = decode_sample(s)
    return out


def _members(root):
    names = []
    for tar in sorted(root.glob("*.tar")):
        with tarfile.open(tar) as t:
            names += t.getnames()
    return names


def _flat(labels):
    """Pixels whose 3x3 neighbourhood holds one class: away from every class edge."""
    k = np.ones((3, 3), np.uint8)
    return cv2.dilate(labels, k) == cv2.erode(labels, k)


@pytest.mark.parametrize("fov_masks", [False, True])
def test_rite_twin_shards_hold_the_exact_classes(tmp_path, fov_masks):
    raw = make_rite(tmp_path / "RITE", n_train=3, n_test=2, size=SIZE, fov_masks=fov_masks)
    m = shard_dataset(raw, tmp_path / "s", layout="rite", split_val=0, progress=False)
    assert {k: v["samples"] for k, v in m["splits"].items()} == {"train": 3, "test": 2}
    assert m["classes"] == RITE_TABLE.to_manifest()
    assert m["snapped"] == {k: 0 for k in ("21_training", "22_training", "23_training",
                                           "01_test", "02_test")}
    assert verify_shards(tmp_path / "s") == []
    names = _members(tmp_path / "s")
    assert "21_training.classes.png" in names and not any(n.endswith("label.png") for n in names)
    samples = _decoded(tmp_path / "s")
    for key, s in samples.items():
        number, kind = key.split("_")
        split = "train" if kind == "training" else "test"
        twin = _twin(int(number) - (21 if split == "train" else 1), split)
        want = twin.labels.copy()
        want[twin.uncertain > 0] = IGNORE_INDEX
        assert np.array_equal(s["label"], want), key
        assert (s["label"] == IGNORE_INDEX).any() and set(np.unique(s["label"])) <= {
            0, 1, 2, 3, 255}
        base = raw / "AV_groundTruth" / kind
        assert np.array_equal(s["image"], read_image(base / "images" / f"{key}.tif"))
        assert s["meta"]["snapped"] == 0
        assert s["meta"]["fov_source"] == ("file" if fov_masks else "estimated")
        if fov_masks:
            assert np.array_equal(s["fov"], twin.fov)
    assert classes_summary(m) == ("classes: background, artery, vein, crossing (+ ignore "
                                  "uncertain); 0 pixels snapped to the nearest class colour "
                                  "in 5 colour masks")


def test_rite_reads_av_ground_truth_itself_and_classes_override(tmp_path):
    raw = make_rite(tmp_path / "RITE", n_train=2, n_test=0, size=SIZE)
    table = ClassTable.from_specs(["bg=0,0,0", "a=255,0,0", "v=0,0,255", "x=0,255,0",
                                   "unsure=255,255,255:ignore"])
    m = shard_dataset(raw / "AV_groundTruth", tmp_path / "s", layout="rite", split_val=0,
                      classes=table, progress=False)
    assert m["classes"] == table.to_manifest()
    assert sorted(_decoded(tmp_path / "s")) == ["21_training", "22_training"]
    assert m["splits"]["train"]["shards"][0]["samples"] == 2


def test_rite_problems_and_layout_hints(tmp_path):
    raw = make_rite(tmp_path / "RITE", n_train=2, n_test=1, size=SIZE, fov_masks=True)
    assert suggest_layout(raw) == "rite" and suggest_layout(raw / "AV_groundTruth") == "rite"
    assert layout_hint(raw, "drive") == " (it looks like RITE: use --layout rite)"
    with pytest.raises(DataError, match=r"no training/ folder: is this DRIVE\? \(it looks "
                                        r"like RITE: use --layout rite\)"):
        shard_dataset(raw, tmp_path / "o", layout="drive", progress=False)
    (raw / "AV_groundTruth" / "training" / "av" / "22_training.png").unlink()
    (raw / "AV_groundTruth" / "test" / "mask" / "01_test_mask.gif").unlink()
    with pytest.raises(DataError) as e:
        shard_dataset(raw, tmp_path / "o", layout="rite", progress=False)
    text = str(e.value)
    assert text.startswith("2 problems in")
    assert "training/images/22_training.tif: no A/V label: expected" in text
    assert "test/images/01_test.tif: no FOV mask: expected" in text
    with pytest.raises(DataError, match="no AV_groundTruth/ folder .*: is this RITE"):
        shard_dataset(tmp_path, tmp_path / "o", layout="rite", progress=False)
    assert not (tmp_path / "o").exists()


def _not_exact(path):
    """Pixels of a JPEG mask that are not exactly one of AV's colours (numpy)."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    exact = (rgb[:, :, None, :] == AV.colours[None, None]).all(-1).any(-1)
    return int((~exact).sum())


def test_jpeg_folders_snap_to_the_twin_classes(tmp_path):
    raw = make_av_jpeg_folders(tmp_path / "jf", n=6, size=SIZE)
    m = shard_dataset(raw, tmp_path / "s", layout="folders", labels="masks",
                      label_suffix="--av", classes=AV, split_val=0, progress=False)
    assert m["classes"] == AV.to_manifest() and verify_shards(tmp_path / "s") == []
    samples = _decoded(tmp_path / "s")
    assert sorted(samples) == [f"{i:02d}" for i in range(1, 7)]
    for key, s in samples.items():
        twin = _twin(int(key) - 1)
        flat = _flat(twin.labels)
        # measured on these twins (quality 90, full chroma): every pixel right, flat or not
        assert (s["label"][flat] == twin.labels[flat]).mean() == 1.0, key
        assert (s["label"] == twin.labels).mean() >= 0.995, key
        want = _not_exact(raw / "masks" / f"{key}--av.jpg")
        assert s["meta"]["snapped"] == m["snapped"][key] == want > 0
    assert "classes.png" in " ".join(_members(tmp_path / "s"))


def test_chroma_subsampled_jpeg_is_refused_then_taken_with_a_wider_share(tmp_path):
    raw = make_av_jpeg_folders(tmp_path / "jf", n=3, size=SIZE, subsampling=2)
    opts = {"layout": "folders", "labels": "masks", "label_suffix": "--av", "classes": AV,
            "split_val": 0, "progress": False}
    with pytest.raises(DataError) as e:
        shard_dataset(raw, tmp_path / "s", **opts)
    lines = str(e.value).splitlines()
    assert lines[0].startswith("3 problems in")
    for i, line in enumerate(lines[1:], 1):
        assert line.strip().startswith(f"{raw}/masks/{i:02d}--av.jpg: ")
        assert "farther than 60 from every class colour (at most 2.0% allowed)" in line
    shard_dataset(raw, tmp_path / "s", max_far_share=0.4, **opts)
    for key, s in _decoded(tmp_path / "s").items():
        twin = _twin(int(key) - 1)
        flat = _flat(twin.labels)
        # 4:2:0 smears 1-2 px vessels across classes, but not the flat regions (measured 1.0)
        assert (s["label"][flat] == twin.labels[flat]).mean() >= 0.99, key
        assert (s["label"] == twin.labels).mean() >= 0.85, key


def _folders(root, masks, images=None):
    """ROOT/images/NN.png (random photos unless given) + ROOT/labels/NN.png from MASKS."""
    rng = np.random.default_rng(0)
    for d in ("images", "labels"):
        (root / d).mkdir(parents=True)
    for i, mask in enumerate(masks):
        image = images[i] if images is not None else rng.integers(0, 256, (*SIZE, 3), np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:02d}.png")
        (mask if isinstance(mask, Image.Image) else Image.fromarray(mask)).save(
            root / "labels" / f"{i:02d}.png")
    return root


def test_a_photo_given_as_mask_is_refused_naming_it(tmp_path):
    photos = [_twin(i).image for i in range(2)]
    raw = _folders(tmp_path / "p", photos, photos)
    with pytest.raises(DataError) as e:
        shard_dataset(raw, tmp_path / "s", layout="folders", classes=AV, progress=False)
    lines = str(e.value).splitlines()
    assert len(lines) == 3 and lines[0].startswith("2 problems in")
    assert lines[1].strip().startswith(f"{raw}/labels/00.png: ")
    assert "of the pixels are farther than 60" in lines[1] and "px)" in lines[1]
    assert not (tmp_path / "s").exists()


def _index_maps(n):
    return [np.where(_twin(i).uncertain > 0, IGNORE_INDEX, _twin(i).labels).astype(np.uint8)
            for i in range(n)]


def test_index_masks_gray_and_palette_round_trip_exactly(tmp_path):
    maps = _index_maps(3)
    gray_palette = Image.fromarray(maps[1], "L").convert("P")  # P mode, indices = values
    coloured = Image.fromarray(maps[2] % 4, "L").convert("P")
    coloured.putpalette([c for rgb in AV.colours.tolist() for c in rgb] * 64)
    raw = _folders(tmp_path / "ix", [maps[0], gray_palette, coloured])
    m = shard_dataset(raw, tmp_path / "s", layout="folders", classes=RITE_TABLE, split_val=0,
                      progress=False)
    assert gray_palette.mode == "P" and read_class_mask(raw / "labels" / "01.png").ndim == 2
    samples = _decoded(tmp_path / "s")
    assert np.array_equal(samples["00"]["label"], maps[0])
    assert np.array_equal(samples["01"]["label"], maps[1])
    # a palette of class colours is a colour mask: read through it (exact, nothing snapped)
    assert np.array_equal(samples["02"]["label"], maps[2] % 4)
    assert m["snapped"] == {"02": 0} and "snapped" not in samples["00"]["meta"]


def test_index_mask_value_outside_the_table_is_refused_naming_it(tmp_path):
    maps = _index_maps(2)
    maps[1][5, 5] = 7
    raw = _folders(tmp_path / "ix", maps)
    with pytest.raises(DataError) as e:
        shard_dataset(raw, tmp_path / "s", layout="folders", classes=AV, progress=False)
    text = str(e.value)
    assert text.startswith("2 problems in")  # AV has no ignore entry: 255 is outside too
    assert f"{raw}/labels/00.png: index mask holds value(s) 255, not in the class table " \
           "(allowed: 0..3)" in text
    assert f"{raw}/labels/01.png: index mask holds value(s) 7, 255," in text


def test_two_class_table_writes_binary_label_png(tmp_path):
    masks = [np.stack([(_twin(i).labels > 0) * 200, np.zeros(SIZE, int), np.zeros(SIZE, int)],
                      -1).astype(np.uint8) for i in range(2)]
    raw = _folders(tmp_path / "b", masks)
    table = ClassTable.from_specs(["background=0,0,0", "vessel=200,0,0"])
    m = shard_dataset(raw, tmp_path / "s", layout="folders", classes=table, split_val=0,
                      progress=False)
    assert m["classes"] == table.to_manifest() and m["snapped"] == {"00": 0, "01": 0}
    assert all(n.endswith((".image.png", ".label.png", ".fov.png", ".meta.json"))
               for n in _members(tmp_path / "s"))
    for key, s in _decoded(tmp_path / "s").items():
        assert np.array_equal(s["label"], (_twin(int(key)).labels > 0).astype(np.uint8))
    with pytest.raises(UserError, match="2-class table is binary .* drop 'x'"):
        shard_dataset(raw, tmp_path / "t", layout="folders", progress=False,
                      classes=ClassTable.from_specs(["bg=0,0,0", "v=200,0,0",
                                                     "x=9,9,9:ignore"]))


@pytest.mark.parametrize("kwargs, message", [
    ({"layout": "drive", "classes": AV}, "--classes does not apply to --layout drive"),
    ({"layout": "rite", "binarize": 127}, "--binarize does not combine with a class table"),
    ({"layout": "folders", "snap_tolerance": 30.0}, "--snap-tolerance and --max-far-share"),
    ({"layout": "rite", "snap_tolerance": float("inf")}, "--snap-tolerance must be a finite"),
    ({"layout": "rite", "snap_tolerance": -1.0}, "--snap-tolerance must be a finite"),
    ({"layout": "rite", "max_far_share": 1.5}, r"--max-far-share must be in \[0, 1\], got 1.5"),
    ({"layout": "folders", "classes": AV, "labels2": "y"}, "--labels2/--test-labels2 do not"),
])
def test_option_errors_are_one_line(tmp_path, kwargs, message):
    (tmp_path / "src").mkdir()
    with pytest.raises(UserError, match=message) as e:
        shard_dataset(tmp_path / "src", tmp_path / "out", progress=False, **kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("snapped", [{"21_training": -1}, {"21_training": True},
                                     {"../x": 3}, {f"i{i}": 0 for i in range(9)}, [1]])
def test_manifest_snapped_is_checked(tmp_path, snapped):
    raw = make_rite(tmp_path / "RITE", n_train=2, n_test=0, size=SIZE)
    shard_dataset(raw, tmp_path / "s", layout="rite", split_val=0, progress=False)
    path = tmp_path / "s" / "manifest.json"
    m = json.loads(path.read_text())
    m["snapped"] = snapped
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match="snapped must map at most 2 sample ids to "
                                        "non-negative pixel counts"):
        read_manifest(tmp_path / "s")


def test_binary_datasets_carry_no_class_keys(tmp_path):
    masks = [(_twin(i).labels > 0).astype(np.uint8) * 255 for i in range(2)]
    raw = _folders(tmp_path / "b", masks)
    m = shard_dataset(raw, tmp_path / "s", layout="folders", split_val=0, progress=False)
    assert "classes" not in m and "snapped" not in m and classes_summary(m) is None
    assert all("classes" not in n for n in _members(tmp_path / "s"))
    assert all("snapped" not in s["meta"] for s in _decoded(tmp_path / "s").values())


def test_av_rgb_twin_colours_are_rites():
    # the reference the tests above rely on: the twins' colours are the default RITE table's
    rgb = av_rgb(np.arange(4, dtype=np.uint8).reshape(2, 2), np.array([[0, 0], [0, 1]]))
    assert rgb.reshape(-1, 3).tolist() == [[0, 0, 0], [255, 0, 0], [0, 0, 255],
                                           [255, 255, 255]]
