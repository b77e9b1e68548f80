"""Synthetic artery/vein data (issue 25, item 6): the label map, the real differences between
arteries and veins measured on the rendered image, RITE's files, the CLI, and the twins.

Widths and skeletons are measured with scipy and scikit-image, not with the cv2 calls that
draw the trees.
"""

import hashlib

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.morphology import skeletonize

from tests.twins import RITE_AV_COLOURS, av_rgb, make_av_jpeg_folders, make_rite
from tests.util import cli
from unetdist.data.ingest.synth import random_geometry, render_fundus, sample_rng, synthetic_sample
from unetdist.data.ingest.synth_av import (
    RITE_COLOURS,
    UNCERTAIN_COLOUR,
    av_colours,
    synthetic_av_sample,
    write_synthetic_av,
)
from unetdist.data.ingest.vessels import ARTERY, VEIN, VesselCanvas, grow_vessel_tree
from unetdist.errors import UserError

CROSSING = 3
# sha256 over image, vessels and fov bytes, computed on main at f2c9d50 (before the A/V
# change to vessels.py and synth.py) with the `_digest` below: the binary `unetdist synth`
# pixels must not move. test_synth.py's PIXELS_GOLDEN pins another sample the same way.
BINARY_GOLDEN = {
    "render_fundus((128, 120), default_rng(25))":
        "0ce6910d52f964a2f686827e8c7ece3d127ede1392179a445f629248290ab5b7",
    "synthetic_sample(1, split='test', seed=3, size=(584, 565))":
        "61638da1fd8160d21d6cbd78222bd1a3ee9681357b86d681fcf73dd5d7930df1",
}
TABLE = {tuple(c) for c in RITE_AV_COLOURS.values()}


def _digest(sample) -> str:
    h = hashlib.sha256()
    for a in (sample.image, sample.vessels, sample.fov):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGB", (path, im.mode)
        return np.asarray(im)


def _gray(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def test_binary_synth_pixels_unchanged():
    assert _digest(render_fundus((128, 120), np.random.default_rng(25))) == BINARY_GOLDEN[
        "render_fundus((128, 120), default_rng(25))"]
    assert _digest(synthetic_sample(1, split="test", seed=3, size=(584, 565))) == BINARY_GOLDEN[
        "synthetic_sample(1, split='test', seed=3, size=(584, 565))"]


def test_per_tree_layers_add_up_to_the_binary_canvas():
    """The two trees' own layers are the binary canvas split in two: mask union, darkness max,
    and the same canvas whether or not they are kept."""
    layers = []
    for per_tree in (False, True):
        rng = sample_rng(0, "train", 4)
        g = random_geometry(160, 150, rng)
        canvas = VesselCanvas(160, 150, per_tree=per_tree)
        grow_vessel_tree(canvas, g, rng)
        layers.append(canvas)
    plain, split = layers
    a, v = split.trees[ARTERY], split.trees[VEIN]
    assert np.array_equal(plain.mask, split.mask) and np.array_equal(plain.dark, split.dark)
    assert np.array_equal(a.mask | v.mask, split.mask)
    assert np.array_equal(np.maximum(a.dark, v.dark), split.dark)
    assert a.mask.any() and v.mask.any() and (a.mask & v.mask).any()
    assert not plain.trees


@pytest.mark.parametrize("index", range(3))
def test_label_map_classes_fov_and_uncertain(index):
    s = synthetic_av_sample(index, size=(128, 128))
    assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
    assert set(np.unique(s.labels)) == {0, ARTERY, VEIN, CROSSING}
    assert not (s.labels * (1 - s.fov)).any(), "labels outside the FOV"
    assert np.array_equal(s.vessels, (s.labels > 0).astype(np.uint8))
    # Uncertain marks are a few small stretches of single-tree vessel.
    single = (s.labels == ARTERY) | (s.labels == VEIN)
    assert s.uncertain.any() and not (s.uncertain.astype(bool) & ~single).any()
    assert s.uncertain.sum() < 0.1 * single.sum()
    # Every crossing touches both an artery and a vein pixel (8-neighbours: cv2's LINE_8).
    full = np.ones((3, 3), bool)
    comps, n = ndimage.label(s.labels == CROSSING, structure=full)
    assert n >= 5
    for k in range(1, n + 1):
        ring = ndimage.binary_dilation(comps == k, structure=full)
        assert {ARTERY, VEIN} <= set(np.unique(s.labels[ring])), f"crossing {k} meets one tree"


def _calibre_and_centre(samples, tree):
    """Pooled mean calibre (2 x distance to the edge at the skeleton of the tree, crossings
    counted as part of both trees) and mean R, G at the skeleton of its own pixels."""
    cal, red, green = [], [], []
    for s in samples:
        own = s.labels == tree
        edt = ndimage.distance_transform_edt(own | (s.labels == CROSSING))
        sk = skeletonize(own)
        cal.append(2 * edt[sk])
        red.append(s.image[..., 0][sk])
        green.append(s.image[..., 1][sk])
    return (np.concatenate(cal).mean(), np.concatenate(red).mean(),
            np.concatenate(green).mean())


def test_arteries_thinner_and_brighter_than_veins():
    samples = [synthetic_av_sample(i, split="test", seed=2, size=(256, 256)) for i in range(4)]
    a_cal, a_red, a_green = _calibre_and_centre(samples, ARTERY)
    v_cal, v_red, v_green = _calibre_and_centre(samples, VEIN)
    assert a_cal < 0.97 * v_cal, (a_cal, v_cal)
    assert a_green > v_green + 5 and a_red > v_red + 5, (a_green, v_green, a_red, v_red)


def test_wide_arteries_show_a_central_reflex_and_veins_do_not():
    """Across a vessel >= 5 px wide, green at the centreline against 1-1.5 px off it: brighter
    in an artery (the light reflex), not in a vein (darkest at its centre)."""
    s = synthetic_av_sample(0, size=(584, 565))
    green = s.image[..., 1].astype(np.float64)
    diff = {}
    for tree in (ARTERY, VEIN):
        own = s.labels == tree
        centre = skeletonize(own) & (ndimage.distance_transform_edt(own) >= 3)
        off = ndimage.distance_transform_edt(~centre)
        ring = own & (off >= 1) & (off <= 1.5)
        assert centre.sum() > 100 and ring.sum() > 300
        diff[tree] = green[centre].mean() - green[ring].mean()
    assert diff[ARTERY] > 1.0 and diff[VEIN] < 0.5, diff


def test_too_small_is_an_error():
    with pytest.raises(UserError, match="32x32"):
        synthetic_av_sample(0, size=(16, 64))


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_write_rite_layout_files_and_colours(tmp_path):
    out = write_synthetic_av(tmp_path / "rite", n_train=2, n_test=1, size=(96, 96), seed=5,
                             progress=False, fov_masks=True)
    g = "AV_groundTruth"
    assert _files(out) == sorted(
        [f"{g}/test/{sub}/01_test{ext}" for sub, ext in
         (("images", ".tif"), ("av", ".png"), ("vessel", ".png"), ("mask", "_mask.gif"))]
        + [f"{g}/training/{sub}/{n}_training{ext}" for n in (21, 22) for sub, ext in
           (("images", ".tif"), ("av", ".png"), ("vessel", ".png"), ("mask", "_mask.gif"))])
    seen = set()
    for split, kind, number, index in (("train", "training", 21, 0), ("train", "training", 22, 1),
                                       ("test", "test", 1, 0)):
        want = synthetic_av_sample(index, split=split, seed=5, size=(96, 96))
        folder, stem = out / g / kind, f"{number:02d}_{kind}"
        assert np.array_equal(_rgb(folder / "images" / f"{stem}.tif"), want.image)
        av = _rgb(folder / "av" / f"{stem}.png")
        colours = {tuple(c) for c in av.reshape(-1, 3)}
        assert colours <= TABLE, colours - TABLE
        seen |= colours
        assert np.array_equal(av, av_rgb(want.labels, want.uncertain))
        # The vessel map holds every vessel, uncertain ones included (as RITE's does).
        vessel = _gray(folder / "vessel" / f"{stem}.png")
        assert set(np.unique(vessel)) == {0, 255}
        assert np.array_equal(vessel > 0, (av != 0).any(axis=2))
        assert np.array_equal(_gray(folder / "mask" / f"{stem}_mask.gif") > 0, want.fov > 0)
    assert seen == TABLE, "every RITE colour, uncertain white included, occurs"
    assert [p.name for p in tmp_path.iterdir()] == ["rite"], "temporary folder left behind"


def test_writer_colours_are_rites():
    assert RITE_COLOURS == {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 0, 255), 3: (0, 255, 0)}
    assert UNCERTAIN_COLOUR == (255, 255, 255)
    s = synthetic_av_sample(2, size=(96, 96))
    assert np.array_equal(av_colours(s), av_rgb(s.labels, s.uncertain))


def test_cli_synth_classes_av_writes_the_rite_tree(tmp_path):
    out = tmp_path / "av"
    r = cli("synth", out, "--classes", "av", "--n-train", 3, "--n-test", 2, "--size", "64x72",
            "--seed", 3, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "wrote 5 synthetic A/V images (3 train, 2 test, 64x72, seed 3)" in r.stdout
    g = "AV_groundTruth"
    want = [f"{g}/{kind}/{sub}/{n:02d}_{kind}.{ext}" for kind, numbers in
            (("training", (21, 22, 23)), ("test", (1, 2))) for n in numbers
            for sub, ext in (("images", "tif"), ("av", "png"), ("vessel", "png"))]
    assert _files(out) == sorted(want)
    im = cv2.imread(str(out / g / "test" / "images" / "02_test.tif"), cv2.IMREAD_UNCHANGED)
    assert im.shape == (64, 72, 3)
    assert cli("synth", tmp_path / "x", "--classes", "lesions").returncode == 2


def test_rite_twin(tmp_path):
    root = make_rite(tmp_path / "twin", n_train=2, n_test=1, size=(96, 88), fov_masks=True)
    files = _files(root)
    assert "AV_groundTruth/training/av/22_training.png" in files and len(files) == 12
    av = _rgb(root / "AV_groundTruth" / "test" / "av" / "01_test.png")
    assert {tuple(c) for c in av.reshape(-1, 3)} <= TABLE
    vessel = _gray(root / "AV_groundTruth" / "test" / "vessel" / "01_test.png")
    assert np.array_equal(vessel > 0, (av != 0).any(axis=2))


def test_av_jpeg_folders_twin_colours_are_near_the_table(tmp_path):
    """JPEG masks hold colours near, not at, the table's; the nearest table colour is still
    each pixel's class."""
    root = make_av_jpeg_folders(tmp_path / "av", n=2, size=(96, 88))
    assert _files(root) == ["images/01.png", "images/02.png", "masks/01--av.jpg",
                            "masks/02--av.jpg"]
    table = np.array([RITE_AV_COLOURS[k] for k in ("background", "artery", "vein", "crossing")],
                     dtype=np.float64)
    for i in range(2):
        rgb = _rgb(root / "masks" / f"{i + 1:02d}--av.jpg").astype(np.float64)
        dist = np.linalg.norm(rgb[..., None, :] - table, axis=-1)
        assert (dist.min(axis=-1) > 0).mean() > 0.2, "JPEG left the colours exact"
        want = synthetic_av_sample(i, split="train", seed=16, size=(96, 88))
        assert np.array_equal(dist.argmin(axis=-1), want.labels)
        assert np.array_equal(_rgb(root / "images" / f"{i + 1:02d}.png"), want.image)


def test_cli_synth_classes_labels_writes_overlapping_label_folders(tmp_path):
    """The multi-label form: the RITE files' A/V colours, read back here, give each label."""
    out = tmp_path / "ml"
    r = cli("synth", out, "--classes", "labels", "--n-train", 2, "--n-test", 1, "--size", "64x72",
            "--seed", 3, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "wrote 3 synthetic multi-label images (2 train, 1 test, 64x72, seed 3)" in r.stdout
    want = [f"{pre}{sub}/{stem}.png" for pre, stems in (("", ("21_training", "22_training")),
                                                        ("test_", ("01_test",)))
            for stem in stems for sub in ("images", "labels/vessel", "labels/artery",
                                          "labels/vein")]
    assert _files(out) == sorted(want)
    rite = tmp_path / "rite"
    assert cli("synth", rite, "--classes", "av", "--n-train", 2, "--n-test", 1, "--size",
               "64x72", "--seed", 3, "--quiet").returncode == 0
    for split, pre, stem in (("training", "", "22_training"), ("test", "test_", "01_test")):
        av = np.array(Image.open(rite / "AV_groundTruth" / split / "av" / f"{stem}.png"))
        red, green, blue = (np.all(av == c, axis=2) for c in ((255, 0, 0), (0, 255, 0),
                                                             (0, 0, 255)))
        white = np.all(av == 255, axis=2)
        masks = {n: np.array(Image.open(out / f"{pre}labels" / n / f"{stem}.png")) > 0
                 for n in ("vessel", "artery", "vein")}
        assert np.array_equal(masks["vessel"], av.any(axis=2))
        known = ~white  # an uncertain stretch is white in av/ but keeps its tree in labels/
        assert np.array_equal(masks["artery"][known], (red | green)[known])
        assert np.array_equal(masks["vein"][known], (blue | green)[known])
        assert (masks["artery"] & masks["vein"]).any() == green.any()
        image = np.array(Image.open(out / f"{pre}images" / f"{stem}.png"))
        tif = np.array(Image.open(rite / "AV_groundTruth" / split / "images" / f"{stem}.tif"))
        assert np.array_equal(image, tif)
