"""Raw file decoding (palette GIFs, binary checks) and layout discovery / validation."""

import numpy as np
import pytest
from PIL import Image

from unetdist.data.ingest.checks import check_samples, format_problems, load_sample
from unetdist.data.ingest.layouts import FolderSpec, assign_val, discover
from unetdist.data.ingest.readers import RawFileError, read_image, read_mask
from unetdist.data.ingest.synth import write_synthetic
from unetdist.errors import DataError

RNG = np.random.default_rng(0)


def _mask(h=20, w=24):
    return (RNG.random((h, w)) > 0.7).astype(np.uint8)


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _rgb(h=20, w=24):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- rawio


@pytest.mark.parametrize("palette, expect_inverted", [([0, 0, 0, 255, 255, 255], False),
                                                      ([255, 255, 255, 0, 0, 0], True)])
def test_palette_gif_decoded_through_palette(tmp_path, palette, expect_inverted):
    m = _mask()
    im = Image.fromarray(m, "P")
    im.putpalette(palette)
    im.save(tmp_path / "m.gif", optimize=False)
    with Image.open(tmp_path / "m.gif") as raw:  # the raw indices really are 0/1
        assert raw.mode == "P" and set(np.unique(np.asarray(raw))) == {0, 1}
    got = read_mask(tmp_path / "m.gif")
    assert np.array_equal(got, 1 - m if expect_inverted else m)


@pytest.mark.parametrize("encode", [lambda m: m, lambda m: m * 255,
                                    lambda m: np.repeat((m * 255)[..., None], 3, axis=2)])
def test_binary_masks_accepted(tmp_path, encode):
    m = _mask()
    assert np.array_equal(read_mask(_png(tmp_path / "m.png", encode(m).astype(np.uint8))), m)


def test_non_binary_mask_lists_values(tmp_path):
    m = _mask() * 255
    m[0, :3] = (7, 128, 200)
    with pytest.raises(RawFileError, match=r"5 distinct values \(0, 7, 128, 200, 255\)"):
        read_mask(_png(tmp_path / "m.png", m.astype(np.uint8)))


def test_colour_mask_rejected(tmp_path):
    with pytest.raises(RawFileError, match="colour"):
        read_mask(_png(tmp_path / "m.png", _rgb()))


def test_read_image_expands_gray_and_rejects_corrupt(tmp_path):
    g = _rgb()[..., 0]
    assert np.array_equal(read_image(_png(tmp_path / "g.png", g)), np.stack([g] * 3, axis=2))
    good = _png(tmp_path / "c.png", _rgb()).read_bytes()
    (tmp_path / "trunc.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.tif").write_bytes(b"not an image at all")
    for name in ("trunc.png", "junk.tif"):
        with pytest.raises(RawFileError, match="cannot read image"):
            read_image(tmp_path / name)


# ----------------------------------------------------------------------------- layouts


def test_drive_discovery_with_second_manual(tmp_path):
    root = write_synthetic(tmp_path / "d", n_train=2, n_test=2, size=(48, 48), progress=False)
    (root / "test" / "2nd_manual").mkdir()
    _png(root / "test" / "2nd_manual" / "01_manual2.gif", _mask(48, 48) * 255)
    found = discover(root, "drive")
    assert not found.problems and not found.notes
    by_id = {s.id: s for s in found.samples}
    assert sorted(by_id) == ["01_test", "02_test", "21_training", "22_training"]
    t = by_id["01_test"]
    assert (t.split, t.label.name, t.fov.name, t.label2.name, t.source) == (
        "test", "01_manual1.gif", "01_test_mask.gif", "01_manual2.gif", "test/images/01_test.tif")
    assert by_id["02_test"].label2 is None and by_id["21_training"].split == "train"


def test_drive_missing_files_are_problems(tmp_path):
    root = write_synthetic(tmp_path / "d", n_train=3, n_test=1, size=(48, 48), progress=False)
    (root / "training" / "1st_manual" / "22_manual1.gif").unlink()
    (root / "training" / "mask" / "23_training_mask.gif").unlink()
    found = discover(root, "drive")
    text = "\n".join(map(str, found.problems))
    assert "22_training.tif: no label: expected" in text and "22_manual1" in text
    assert "23_training.tif: no FOV mask" in text
    assert [s.id for s in found.samples] == ["21_training", "01_test"]


def test_drive_test_without_labels_is_skipped_with_a_note(tmp_path):
    root = write_synthetic(tmp_path / "d", n_train=1, n_test=1, size=(48, 48), progress=False)
    for p in (root / "test" / "1st_manual").iterdir():
        p.unlink()
    (root / "test" / "1st_manual").rmdir()
    found = discover(root, "drive")
    assert not found.problems and [s.split for s in found.samples] == ["train"]
    assert "test split skipped" in found.notes[0]


def test_seed_layout(tmp_path):
    for split in ("Train", "Test"):
        for i in range(2):
            _png(tmp_path / f"{split}_Images" / f"{split.lower()}{i}.png", _rgb())
            _png(tmp_path / f"{split}_Labels" / f"{split.lower()}{i}.png", _mask() * 255)
    found = discover(tmp_path, "seed")
    assert not found.problems
    assert [(s.id, s.split, s.fov) for s in found.samples] == [
        ("train0", "train", None), ("train1", "train", None),
        ("test0", "test", None), ("test1", "test", None)]


def test_folders_layout_with_suffixes(tmp_path):
    for key in ("a", "b"):
        _png(tmp_path / "img" / f"{key}_img.jpg", _rgb())
        _png(tmp_path / "gt" / f"{key}_vessels.png", _mask() * 255)
        _png(tmp_path / "fov" / f"{key}_fov.png", np.ones((20, 24), np.uint8))
    (tmp_path / "img" / "notes.txt").write_text("ignored: not an image")
    spec = FolderSpec(images="img", labels="gt", fov="fov", image_suffix="_img",
                      label_suffix="_vessels", fov_suffix="_fov")
    found = discover(tmp_path, "folders", spec)
    assert not found.problems
    assert [(s.id, s.label.name, s.fov.name) for s in found.samples] == [
        ("a_img", "a_vessels.png", "a_fov.png"), ("b_img", "b_vessels.png", "b_fov.png")]


def test_bad_ids_and_duplicates(tmp_path):
    for split in ("Train", "Test"):
        for name in ("same", "has space"):
            _png(tmp_path / f"{split}_Images" / f"{name}.png", _rgb())
            _png(tmp_path / f"{split}_Labels" / f"{name}.png", _mask())
    text = "\n".join(map(str, discover(tmp_path, "seed").problems))
    assert "'has space' is not a valid sample id" in text
    assert "sample id 'same' is in both the train and the test split" in text


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    text = "\n".join(map(str, discover(tmp_path, "folders").problems))
    assert f"{tmp_path / 'images'}: no image files" in text
    with pytest.raises(DataError, match="source folder not found"):
        discover(tmp_path / "nope", "drive")


# ----------------------------------------------------------------------------- checks


def test_check_samples_collects_every_problem(tmp_path):
    _png(tmp_path / "images" / "ok.png", _rgb())
    _png(tmp_path / "labels" / "ok.png", _mask())
    _png(tmp_path / "images" / "size.png", _rgb())
    _png(tmp_path / "labels" / "size.png", _mask(21, 24))
    _png(tmp_path / "images" / "grey.png", _rgb())
    _png(tmp_path / "labels" / "grey.png", (_mask() * 100).astype(np.uint8))
    (tmp_path / "images" / "bad.png").write_bytes(b"\x89PNG garbage")
    _png(tmp_path / "labels" / "bad.png", _mask())
    found = discover(tmp_path, "folders")
    problems = check_samples(found.samples, threads=2, progress=False)
    text = "\n".join(map(str, problems))
    assert len(problems) == 3, text
    assert "images/bad.png: cannot read image" in text
    assert "labels/size.png: label is 21x24 (HxW) but image size.png is 20x24" in text
    assert "labels/grey.png: mask is not binary: 2 distinct values (0, 100)" in text
    ok = next(s for s in found.samples if s.id == "ok")
    loaded, none = load_sample(ok)
    assert not none and loaded.fov is None and loaded.label.max() == 1


def test_format_problems_shows_first_20_and_a_count():
    from unetdist.data.ingest.records import Problem

    text = format_problems([Problem(f"f{i}", "bad") for i in range(23)], "SRC")
    assert text.splitlines()[0] == "23 problems in SRC; nothing was written:"
    assert "f19: bad" in text and "f20" not in text and "... and 3 more" in text


# ----------------------------------------------------------------------------- val split


def test_assign_val_is_deterministic_and_bounded(tmp_path):
    from unetdist.data.ingest.records import RawSample

    samples = [RawSample(f"s{i:02d}", "train", tmp_path, tmp_path) for i in range(20)]
    samples.append(RawSample("t0", "test", tmp_path, tmp_path))
    a = assign_val(samples, 0.1)
    b = assign_val(list(reversed(samples)), 0.1)
    val_a = sorted(s.id for s in a if s.split == "val")
    assert len(val_a) == 2 and val_a == sorted(s.id for s in b if s.split == "val")
    assert [s.split for s in a if s.id == "t0"] == ["test"]
    assert sum(s.split == "val" for s in assign_val(samples, 0.01)) == 1  # at least one
    assert all(s.split != "val" for s in assign_val(samples, 0.0))
    with pytest.raises(DataError, match="leaves no training samples"):
        assign_val(samples[:1], 0.5)
    with pytest.raises(DataError, match=r"\[0, 1\)"):
        assign_val(samples, 1.0)
