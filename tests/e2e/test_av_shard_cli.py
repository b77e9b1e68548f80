"""`unetdist shard` on A/V datasets as a user runs it: RITE (synthetic and twin), JPEG colour
masks with a `--av` suffix, class tables from the command line and a YAML file, refusals."""

import json

import numpy as np
import webdataset as wds
from PIL import Image

from tests.twins import make_av_jpeg_folders, make_rite
from tests.util import cli
from unetdist.data.codec import decode_sample
from unetdist.data.manifest import class_table, read_manifest, shard_paths

AV_SPECS = ["background=0,0,0", "artery=255,0,0", "vein=0,0,255", "crossing=0,255,0"]


def _labels(root):
    return {s["__key__"]: decode_sample(s)["label"]
            for split in read_manifest(root)["splits"]
            for s in wds.WebDataset(shard_paths(root, split), shardshuffle=False)}


def test_synth_av_then_shard_rite_then_verify(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "shards"
    r = cli("synth", raw, "--classes", "av", "--n-train", 3, "--n-test", 2, "--size", "96x88")
    assert r.returncode == 0, r.stderr
    r = cli("shard", raw, out, "--layout", "rite")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("wrote 5 samples (train 2, val 1, test 2) in 3 shards, ")
    assert lines[-1] == ("classes: background, artery, vein, crossing (+ ignore uncertain); "
                         "0 pixels snapped to the nearest class colour in 5 colour masks")
    table = class_table(read_manifest(out))
    assert table.names == ("background", "artery", "vein", "crossing")
    assert table.ignore_index == 255 and table.out_channels == 4
    labels = _labels(out)
    assert len(labels) == 5 and all(set(np.unique(v)) <= {0, 1, 2, 3, 255}
                                    for v in labels.values())
    r = cli("shard", "--verify", out)
    assert r.returncode == 0 and r.stdout.startswith("ok: 3 shards"), r.stderr


def test_jpeg_masks_with_a_dash_suffix_and_a_yaml_table(tmp_path):
    raw = make_av_jpeg_folders(tmp_path / "jf", n=4)
    r = cli("shard", raw, tmp_path / "a", "--layout", "folders", "--labels", "masks",
            "--label-suffix=--av", "--split-val", 0, "--classes", *AV_SPECS)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    total = sum(m["snapped"].values())
    assert sorted(m["snapped"]) == ["01", "02", "03", "04"] and min(m["snapped"].values()) > 0
    assert r.stdout.strip().splitlines()[-1] == (
        f"classes: background, artery, vein, crossing; {total} pixels snapped to the nearest "
        "class colour in 4 colour masks")
    assert cli("shard", "--verify", tmp_path / "a").returncode == 0
    (tmp_path / "t.yaml").write_text("".join(
        f"- {{name: {s.split('=')[0]}, colour: [{s.split('=')[1]}]}}\n" for s in AV_SPECS))
    r = cli("shard", raw, tmp_path / "b", "--layout", "folders", "--labels", "masks",
            "--label-suffix=--av", "--split-val", 0, "--classes-file", tmp_path / "t.yaml")
    assert r.returncode == 0, r.stderr
    assert read_manifest(tmp_path / "b")["classes"] == m["classes"]
    a, b = _labels(tmp_path / "a"), _labels(tmp_path / "b")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _error_lines(r):
    return [line for line in r.stderr.splitlines() if line.startswith("error: ")]


def test_refusals_are_one_line_with_exit_2(tmp_path):
    raw = make_av_jpeg_folders(tmp_path / "jf", n=2)
    base = ["shard", raw, tmp_path / "o", "--layout", "folders", "--labels", "masks",
            "--label-suffix=--av"]
    r = cli(*base, "--classes", "background=0,0,0", "artery=255,0")
    assert r.returncode == 2
    assert _error_lines(r) == [("error: --classes: entry 'artery=255,0' must be NAME=R,G,B "
                                "(NAME: a letter, then letters, digits, _ or -; R,G,B: 0..255; "
                                "NAME=R,G,B:ignore for the ignore entry)")]
    r = cli(*base, "--classes", *AV_SPECS, "--max-far-share", "2")
    assert r.returncode == 2
    assert _error_lines(r) == ["error: --max-far-share must be in [0, 1], got 2.0"]
    r = cli(*base, "--snap-tolerance", "30")
    assert r.returncode == 2 and "apply to colour masks read through a class table" in r.stderr
    photo = raw / "masks" / "02--av.jpg"
    Image.open(raw / "images" / "02.png").convert("RGB").save(photo, quality=95)
    r = cli(*base, "--classes", *AV_SPECS)
    assert r.returncode == 2 and len(_error_lines(r)) == 1
    assert f"{photo}: " in r.stderr and "farther than 60 from every class colour" in r.stderr
    assert not (tmp_path / "o").exists()


def test_drive_layout_on_rite_names_rite(tmp_path):
    raw = make_rite(tmp_path / "RITE", n_train=2, n_test=0)
    r = cli("shard", raw, tmp_path / "o", "--layout", "drive")
    assert r.returncode == 2
    assert "no training/ folder: is this DRIVE? (it looks like RITE: use --layout rite)" \
        in r.stderr
