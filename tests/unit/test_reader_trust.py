"""The shard reader refuses decompression bombs and non-PNG members before decoding them."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from unetdist.data import reader
from unetdist.data.codec import encode_mask, encode_png
from unetdist.errors import DataError


def _with_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with an IHDR that declares WIDTH x HEIGHT (a 1 kB 'bomb')."""
    return png[:16] + struct.pack(">II", width, height) + png[24:]


def _raw(size: int = 64, meta: dict | None = None) -> dict:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = (rng.random((size, size)) > 0.5).astype(np.uint8)
    meta = meta if meta is not None else {"id": "s1", "height": size, "width": size}
    return {"__key__": "s1", "image.png": encode_png(image), "label.png": encode_mask(mask),
            "fov.png": encode_mask(np.ones_like(mask)), "meta.json": json.dumps(meta).encode()}


@pytest.fixture
def no_decode(monkeypatch):
    def refuse(raw):
        raise AssertionError("a refused member reached the decoder")

    monkeypatch.setattr(reader, "decode_sample", refuse)


def test_png_size_reads_the_header():
    raw = _raw(48)
    assert reader.png_size(raw["image.png"]) == (48, 48)
    assert reader.png_size(_with_size(raw["image.png"], 30000, 20000)) == (30000, 20000)
    assert reader.png_size(b"\xff\xd8\xff\xe0" + bytes(40)) is None  # a JPEG


def test_a_png_declaring_a_huge_size_is_skipped_without_decoding(no_decode):
    raw = _raw()
    raw["image.png"] = _with_size(raw["image.png"], 30000, 30000)
    sample, why = reader.decode_checked(raw, "skip")
    assert sample is None
    assert "image.png declares 30000x30000 pixels" in why and "64x64" in why
    with pytest.raises(DataError, match="declares 30000x30000"):
        reader.decode_checked(raw, "error")


def test_a_meta_json_that_lies_too_is_held_to_max_pixels(no_decode):
    raw = _raw(meta={"id": "s1", "height": 30000, "width": 30000})
    for m in reader.PNG_MEMBERS[:3]:
        raw[m] = _with_size(raw[m], 30000, 30000)
    sample, why = reader.decode_checked(raw, "skip")
    assert sample is None and f"more than the {reader.MAX_PIXELS} allowed" in why


def test_members_that_are_not_png_are_refused(no_decode):
    import cv2

    raw = _raw()
    _, jpeg = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))
    raw["fov.png"] = jpeg.tobytes()  # OpenCV would decode it (and any format it knows)
    assert reader.decode_checked(raw, "skip") == (None, "sample 's1': fov.png is not a PNG")


def test_a_sound_sample_still_decodes():
    sample, why = reader.decode_checked(_raw(), "error")
    assert why == "" and sample["image"].shape == (64, 64, 3)


def test_decode_errors_in_a_staged_copy_suggest_rehash(tmp_path):
    raw = _raw()
    raw["label.png"] = raw["label.png"][:30]  # corrupted, header intact
    raw["__url__"] = str(tmp_path / "train-000000.tar")
    _, why = reader.decode_checked(raw, "skip")
    assert "rehash" not in why  # shards read in place: nothing to re-stage
    (tmp_path / ".stage").mkdir()
    _, why = reader.decode_checked(raw, "skip")
    assert f"unetdist stage --rehash SHARED_DIR {tmp_path}" in why


def test_a_classes_map_decodes_to_its_indices_and_a_label_mask_to_0_1():
    from unetdist.data.codec import decode_sample, encode_classes

    raw = _raw(32)
    binary = decode_sample(raw)["label"]
    assert binary.dtype == np.uint8 and set(np.unique(binary)) == {0, 1}
    index = np.random.default_rng(1).choice([0, 1, 2, 3, 255], (32, 32)).astype(np.uint8)
    del raw["label.png"]
    raw["classes.png"] = encode_classes(index)
    assert np.array_equal(decode_sample(raw)["label"], index)


@pytest.mark.parametrize("members", [(), ("label.png", "classes.png"),
                                     ("classes.png", "channel1.png"), ("channel2.png",)])
def test_a_sample_needs_exactly_one_label_member(members):
    from unetdist.data.codec import decode_sample, encode_classes

    raw = _raw(16)
    del raw["label.png"]
    for m in members:
        raw[m] = encode_classes(np.zeros((16, 16), np.uint8))
    with pytest.raises(DataError, match="needs exactly one label: label.png, classes.png or "
                                        "channel1.png"):
        decode_sample(raw)


def test_multilabel_channels_decode_to_the_bit_mask_they_were_written_from():
    from unetdist.data.classes import from_bitmask
    from unetdist.data.codec import decode_sample, encode_channels

    rng = np.random.default_rng(3)
    channels = (rng.random((3, 16, 16)) < 0.4).astype(np.uint8)  # overlapping labels
    bits = channels[0] | channels[1] << 1 | channels[2] << 2  # built here, not by to_bitmask
    raw = _raw(16)
    del raw["label.png"]
    raw.update(encode_channels(bits, 3))
    got = decode_sample(raw)["label"]
    assert np.array_equal(got, bits) and np.array_equal(from_bitmask(got, 3), channels)
    raw["channel2.png"] = raw["channel2.png"][:40]  # a truncated member: one line naming it
    with pytest.raises(DataError, match="channel2"):
        decode_sample(raw)


def test_a_classes_member_bomb_is_refused_before_decoding(no_decode):
    raw = _raw(16)
    raw["classes.png"] = _with_size(raw.pop("label.png"), 100_000, 100_000)
    with pytest.raises(DataError, match="classes.png declares"):
        reader.decode_checked(raw, "error")
