"""An artery/vein dataset end to end (issue 25), the way docs/datasets.md says: each supported
A/V layout (RITE's tree, and JPEG colour masks in generic folders) -> `shard` -> `--verify` ->
`train` with `configs/av_unet.yaml` scaled down (2 processes under `accelerate launch`)
-> `evaluate` -> `predict` -> `report` -> `export`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from tests.twins import make_av_jpeg_folders
from tests.util import REPO, cli, launch, subprocess_env

pytestmark = pytest.mark.slow

AV_SPECS = ["background=0,0,0", "artery=255,0,0", "vein=0,0,255", "crossing=0,255,0"]
SMALL = ["model.width=8", "model.depth=2", "data.crop=64", "data.batch_size=2",
         "data.num_workers=0", "data.steps_per_epoch=4", "train.max_steps=8", "train.eval_every=4",
         "eval.tile=0", "eval.tta=false", "train.precision=no", "data.local_dir=null",
         "data.stage=false", "checkpoint.every_steps=4", "train.progress=false",
         "track.wandb.mode=disabled", "model.channels_last=false"]


def _ok(r) -> None:
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


@pytest.fixture(scope="module")
def rite(tmp_path_factory):
    root = tmp_path_factory.mktemp("rite")
    _ok(cli("synth", root / "raw", "--classes", "av", "--n-train", 6, "--n-test", 2, "--size",
            "96x96", "--quiet"))
    _ok(cli("shard", root / "raw", root / "shards", "--layout", "rite", "--split-val", "0.34",
            "--quiet"))
    _ok(cli("shard", "--verify", root / "shards"))
    _ok(launch(["train", "--config", REPO / "configs" / "av_unet.yaml", *SMALL,
                f"data.shared_dir={root / 'shards'}", f"train.run_dir={root / 'run'}"],
               env=subprocess_env(), timeout=600))
    return root


@pytest.mark.dist
def test_rite_trains_on_two_ranks_and_keeps_per_class_validation(rite):
    records = [json.loads(x) for x in (rite / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r.get("split") == "val"]
    assert [r["step"] for r in val] == [4, 8]
    assert {"dice_artery", "dice_vein", "miou", "av_accuracy"} <= set(val[-1])
    best = json.loads((rite / "run" / "best" / "metrics.json").read_text())
    assert best["dice"] == max(r["dice"] for r in val)
    with safe_open(str(rite / "run" / "best" / "model.safetensors"), "pt") as f:
        table = json.loads(f.metadata()["classes"])
    assert [e["name"] for e in table["entries"]] == ["background", "artery", "vein", "crossing"]
    assert table["ignore"]["index"] == 255


@pytest.mark.dist
def test_rite_evaluates_predicts_reports_and_exports(rite):
    ev = rite / "run" / "eval-shards-test"  # the default folder, which the report reads
    _ok(cli("evaluate", "--checkpoint", rite / "run", "--data", rite / "shards", "--split", "test",
            "--quiet"))
    metrics = json.loads((ev / "metrics.json").read_text())
    conf = np.array(metrics["classes"]["confusion"])
    assert conf.shape == (4, 4) and metrics["num_images"] == 2
    assert set(metrics["av"]) >= {"accuracy", "sensitivity", "specificity", "vessel_f1"}
    rows = list(csv.DictReader((ev / "per_image.csv").open()))
    assert len(rows) == 2 and "dice_artery" in rows[0]
    images = rite / "images"
    images.mkdir()
    for tif in sorted((rite / "raw").rglob("test/images/*.tif")):
        (images / tif.name).write_bytes(tif.read_bytes())
    _ok(cli("predict", "--checkpoint", rite / "run", "--images", images, "--out", rite / "pred",
            "--quiet"))
    colours = {(0, 0, 0), (255, 0, 0), (0, 0, 255), (0, 255, 0)}
    coloured = np.array(Image.open(rite / "pred" / "01_test.png").convert("RGB")).reshape(-1, 3)
    assert {tuple(c) for c in np.unique(coloured, axis=0)} <= colours
    for name in ("background", "artery", "vein", "crossing"):
        assert (rite / "pred" / f"01_test.{name}.png").is_file()
    _ok(cli("report", rite / "run"))
    html = (rite / "run" / "report.html").read_text()
    assert "artery" in html and "confusion" in html.lower()
    out = rite / "av.safetensors"
    _ok(cli("export", "--checkpoint", rite / "run", "--format", "safetensors", "--out", out))
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["classes"])["entries"][1]["name"] == "artery"


@pytest.mark.dist
def test_jpeg_colour_masks_in_folders_shard_train_and_evaluate(tmp_path):
    raw = make_av_jpeg_folders(tmp_path / "raw", n=6, size=(96, 88))
    _ok(cli("shard", raw, tmp_path / "shards", "--layout", "folders", "--labels", "masks",
            "--label-suffix=--av", "--split-val", "0.34", "--classes", *AV_SPECS, "--quiet"))
    _ok(cli("shard", "--verify", tmp_path / "shards"))
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert sum(manifest["snapped"].values()) > 0  # JPEG colours are near, not at, the table's
    _ok(launch(["train", "--config", REPO / "configs" / "av_unet.yaml", *SMALL,
                "loss.ignore_index=null", f"data.shared_dir={tmp_path / 'shards'}",
                f"train.run_dir={tmp_path / 'run'}"], env=subprocess_env(), timeout=600))
    _ok(cli("evaluate", "--checkpoint", tmp_path / "run", "--data", tmp_path / "shards",
            "--split", "val", "--out", tmp_path / "eval", "--quiet"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert len(metrics["classes"]["per_class"]) == 4 and "av" in metrics
