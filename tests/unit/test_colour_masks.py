"""Issue 25 item 2: label masks as people ship them — colour-coded (JPEG too), index masks,
multilabel channels — become checked class-index maps, or one error line naming the image."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from unetdist.data.classes import ClassTable
from unetdist.data.ingest.colour_masks import (
    check_index_mask,
    multilabel_channels,
    snap_colours,
)
from unetdist.errors import DataError

AV = ClassTable.from_specs(["background=0,0,0", "artery=255,0,0", "vein=0,0,255",
                            "crossing=0,255,0", "uncertain=255,255,255:ignore"])
VALUES = np.array([0, 1, 2, 3, 255], dtype=np.uint8)  # background, artery, vein, crossing, ignore


def _av_mask(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    """An A/V-like index map: a tree of red/blue lines from a 'disc', green crossings, white
    uncertain segments, on black (drawn without anti-aliasing: the true classes are exact)."""
    rng = np.random.default_rng(seed)
    idx = np.zeros((h, w), np.uint8)
    disc = (w // 3, h // 2)
    for k in range(24):
        cls = 1 if k % 2 else 2
        angle = rng.uniform(0, 2 * np.pi)
        pts = [disc]
        for _ in range(4):
            angle += rng.normal(0, 0.4)
            x, y = pts[-1]
            pts.append((int(x + 60 * np.cos(angle)), int(y + 60 * np.sin(angle))))
        width = int(rng.integers(3, 9)) + (2 if cls == 2 else 0)  # veins are wider
        cv2.polylines(idx, [np.array(pts, np.int32)], False, cls, width, cv2.LINE_8)
    for _ in range(12):
        x, y = int(rng.integers(20, w - 20)), int(rng.integers(20, h - 20))
        cv2.circle(idx, (x, y), 5, 3, -1)  # crossings
    cv2.rectangle(idx, (w - 120, 40), (w - 60, 70), 255, -1)  # an uncertain patch
    return idx


def _jpeg(rgb: np.ndarray, quality: int = 75) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def _reference(rgb: np.ndarray, table: ClassTable) -> np.ndarray:
    """Nearest table colour by brute force in float64 (what snap_colours computes in blocks)."""
    palette = np.vstack([table.colours, [table.ignore.colour]]).astype(float)
    d = ((rgb[:, :, None, :].astype(float) - palette[None, None]) ** 2).sum(-1)
    return VALUES[d.argmin(-1)]


def test_a_lossless_colour_mask_reads_back_exactly_with_nothing_snapped():
    idx = _av_mask()
    assert set(np.unique(idx).tolist()) == {0, 1, 2, 3, 255}
    out, snapped = snap_colours(AV.colourize(idx), AV, 0.0, 0.0, "av.png")
    assert out.dtype == np.uint8 and out.shape == idx.shape
    np.testing.assert_array_equal(out, idx)
    assert snapped == 0


def test_a_jpeg_colour_mask_snaps_back_to_its_classes():
    idx = _av_mask()
    noisy = _jpeg(AV.colourize(idx))
    exact = (noisy[..., None, :] == np.vstack([AV.colours, [AV.ignore.colour]])).all(-1).any(-1)
    out, snapped = snap_colours(noisy, AV, tolerance=120.0, max_far_share=0.05, name="01_av.jpg")
    assert snapped == int((~exact).sum()) > 0.01 * idx.size  # JPEG moved many colours
    np.testing.assert_array_equal(out, _reference(noisy, AV))  # far ones (~0.5%) too
    # Away from class edges (3 px) JPEG keeps colours close: the classes come back.
    kernel = np.ones((7, 7), np.uint8)
    interior = cv2.dilate(idx, kernel) == cv2.erode(idx, kernel)
    agree = (out == idx)[interior].mean()
    assert agree >= 0.999, agree  # measured: 1.0
    assert (out == idx).mean() >= 0.99  # edges included (measured: 0.998)
    for v in (1, 2, 3, 255):  # every class survives, thin lines included
        assert (out[interior & (idx == v)] == v).mean() >= 0.99, v


def test_far_pixels_within_the_allowed_share_go_to_the_nearest_colour():
    idx = _av_mask()
    rgb = AV.colourize(idx)
    rgb[:4, :40] = (200, 40, 40)  # 160 px at distance ~76 from red: "far" at tolerance 30
    out, snapped = snap_colours(rgb, AV, 30.0, max_far_share=0.01, name="a.png")
    assert (out[:4, :40] == 1).all() and snapped == 160
    with pytest.raises(DataError, match=r"^a\.png: 0\.1% .* 200,40,40 \(160 px\)"):
        snap_colours(rgb, AV, 30.0, max_far_share=0.0001, name="a.png")


def test_ties_go_to_the_first_table_colour():
    t = ClassTable.from_specs(["background=0,0,0", "a=255,0,0", "b=0,255,0"])
    out, snapped = snap_colours(np.full((2, 2, 3), (128, 128, 0), np.uint8), t, 500, 0, "t")
    assert (out == 1).all() and snapped == 4  # equally far from red and green


def test_a_photo_is_refused_naming_the_image_and_its_colours():
    photo = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    with pytest.raises(DataError) as e:
        snap_colours(photo, AV, 60.0, 0.05, "IMG_0042.jpg")
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600, msg
    assert msg.startswith("IMG_0042.jpg: ") and "most frequent such colours" in msg
    shown = msg.split("colours: ")[1].split(" and ")[0].split("), ")
    assert len(shown) == 5  # the five most frequent, with their counts


def test_the_refusal_lists_the_most_frequent_far_colours_first():
    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[:50] = (255, 255, 0)  # yellow: a table that forgot a class
    rgb[50:60] = (128, 0, 128)
    with pytest.raises(DataError, match=r"^x: 60\.0% .*: 255,255,0 \(5000 px\), 128,0,128 "
                                        r"\(1000 px\) \("):
        snap_colours(rgb, AV, 50, 0.5, "x")


def test_a_full_size_photo_stays_within_a_few_hundred_megabytes():
    photo = np.random.default_rng(2).integers(0, 256, (2336, 3504, 3), dtype=np.uint8)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="big.jpg"):
            snap_colours(photo, AV, 60.0, 0.05, "big.jpg")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # an (H*W, 5) float64 distance array alone is 327 MB; measured peak: ~210 MB
    assert peak < 300e6, peak / 1e6


def test_colourize_then_snap_at_tolerance_zero_is_the_identity():
    rng = np.random.default_rng(3)
    idx = rng.choice(VALUES, (64, 96))
    out, snapped = snap_colours(AV.colourize(idx), AV, 0.0, 0.0, "r")
    np.testing.assert_array_equal(out, idx)
    assert snapped == 0
    many = ClassTable.from_specs([f"c{i}={i},{255 - i},{i * 7 % 256}" for i in range(200)])
    idx = rng.integers(0, 200, (50, 60)).astype(np.uint8)
    np.testing.assert_array_equal(snap_colours(many.colourize(idx), many, 0, 0, "m")[0], idx)


def test_snap_needs_an_rgb_uint8_image():
    with pytest.raises(DataError, match=r"^g\.png: .*\(H, W, 3\) uint8.*\(5, 5\)"):
        snap_colours(np.zeros((5, 5), np.uint8), AV, 10, 0, "g.png")
    assert snap_colours(np.zeros((0, 5, 3), np.uint8), AV, 10, 0, "e")[0].shape == (0, 5)


# ------------------------------------------------------------------------------ index masks


def test_an_index_mask_with_table_values_passes_unchanged():
    idx = _av_mask()
    out = check_index_mask(idx, AV, "i.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, idx)
    np.testing.assert_array_equal(check_index_mask(idx.astype(np.uint16), AV, "i.png"), idx)


@pytest.mark.parametrize("bad,named", [(7, "7"), (4, "4"), (254, "254"), (300, "300")])
def test_an_index_mask_value_outside_the_table_is_named(bad, named):
    idx = _av_mask().astype(np.uint16)
    idx[10, 10] = bad
    with pytest.raises(DataError) as e:
        check_index_mask(idx if bad > 255 else idx.astype(np.uint8), AV, "07_manual.png")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("07_manual.png: ")
    assert f"value(s) {named}," in msg and "0..3 and 255 (uncertain)" in msg, msg


def test_the_ignore_index_needs_an_ignore_entry():
    no_ignore = ClassTable.from_specs(["background=0,0,0", "disc=255,255,0", "cup=0,255,255"])
    idx = np.array([[0, 1], [2, 255]], np.uint8)
    with pytest.raises(DataError, match=r"value\(s\) 255, .*allowed: 0\.\.2\)"):
        check_index_mask(idx, no_ignore, "m")
    many = np.arange(12, dtype=np.uint8).reshape(3, 4) + 3
    with pytest.raises(DataError, match=r"value\(s\) 3, 4, 5, 6, 7 and 7 more"):
        check_index_mask(many, no_ignore, "m")


def test_an_index_mask_has_one_integer_channel():
    with pytest.raises(DataError, match=r"^c\.png: .*one channel.*\(4, 4, 3\)"):
        check_index_mask(np.zeros((4, 4, 3), np.uint8), AV, "c.png")
    with pytest.raises(DataError, match=r"^f\.png: .*float"):
        check_index_mask(np.zeros((4, 4), np.float32), AV, "f.png")


# ------------------------------------------------------------------------------ multilabel


DISC_CUP = ClassTable.from_specs(["background=0,0,0", "disc=255,255,0", "cup=0,255,255"],
                                 mode="multilabel")


def test_multilabel_channels_stack_binary_masks_in_table_order():
    disc = np.zeros((32, 32), np.uint8)
    cv2.circle(disc, (16, 16), 10, 255, -1)
    cup = np.zeros((32, 32), np.uint8)
    cv2.circle(cup, (16, 16), 4, 1, -1)  # overlaps the disc: 0/1 and 0/255 both accepted
    out = multilabel_channels([disc, cup], DISC_CUP, "g1")
    assert out.shape == (2, 32, 32) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], disc > 0)
    np.testing.assert_array_equal(out[1], cup > 0)
    assert (out[1] <= out[0]).all()


def test_multilabel_channels_refuse_gray_masks_wrong_counts_and_sizes():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    with pytest.raises(DataError, match=r"^g1: label 'cup': mask is not binary"):
        multilabel_channels([np.zeros((8, 8), np.uint8), gray], DISC_CUP, "g1")
    with pytest.raises(DataError, match=r"^g1: 1 label masks for the 2 labels .*disc, cup"):
        multilabel_channels([gray], DISC_CUP, "g1")
    with pytest.raises(DataError, match=r"^g1: label 'cup' mask has shape \(8, 9\)"):
        multilabel_channels([np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8)],
                            DISC_CUP, "g1")
