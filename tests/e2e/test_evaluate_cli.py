"""`unetdist evaluate / export / predict` on synthetic DRIVE-layout data with a tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.eval_helpers import make_best_dir, tiny_config
from tests.util import cli

SIZE = (72, 80)  # (H, W) of the synthetic images
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    root = tmp_path_factory.mktemp("evalcli")
    raw = write_synthetic(root / "raw", n_train=2, n_test=3, size=SIZE, seed=0, progress=False)
    shards = root / "shards"
    shard_dataset(raw, shards, layout="drive", split_val=0.1)
    raw2 = write_synthetic(root / "raw2", n_train=2, n_test=2, size=SIZE, seed=5, progress=False)
    other = root / "other-shards"  # a second dataset: its results must not replace the first
    shard_dataset(raw2, other, layout="drive", split_val=0.1)
    best = make_best_dir(root / "run" / "best", tiny_config(), seed=2)
    return {"root": root, "raw": Path(raw), "shards": shards, "other": other, "best": best}


def _run_ok(*args) -> str:
    r = cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _png(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def _gif_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def _evaluate(data: dict, checkpoint, out: Path | None = None, *extra) -> dict:
    args = ["evaluate", "--checkpoint", checkpoint, "--data", data["shards"], "--split", "test",
            "--quiet", *extra]
    if out is not None:
        args += ["--out", out]
    _run_ok(*args)
    default = data["best"].parent / "eval-shards-test"
    return json.loads(((out or default) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def folder_metrics(data) -> dict:
    return _evaluate(data, data["best"])  # default --out: RUN/eval-<data>-<split>


def test_evaluate_writes_metrics_predictions_and_plots(data, folder_metrics):
    from unetdist.data.manifest import manifest_hash, read_manifest

    out = data["best"].parent / "eval-shards-test"
    m = folder_metrics
    assert m["num_images"] == 3 and m["info"]["split"] == "test"
    assert m["info"]["data"] == str(data["shards"].resolve())
    assert m["info"]["manifest_hash"] == manifest_hash(read_manifest(data["shards"]))
    assert m["info"]["checkpoint"] == str(data["best"].resolve()) and m["info"]["step"] == "7"
    assert m["seconds_per_image"] > 0
    masks = sorted((data["raw"] / "test" / "mask").iterdir())
    fov_pixels = sum(int(_gif_mask(p).sum()) for p in masks)
    assert sum(m["fov"]["counts"].values()) == fov_pixels
    assert sum(m["image"]["counts"].values()) == 3 * SIZE[0] * SIZE[1]
    assert 0 <= m["fov"]["auc_roc"] <= 1 and m["regions"]["fov"]
    ids = sorted(p.stem for p in (data["raw"] / "test" / "images").iterdir())
    for key in ids:
        assert _png(out / "predictions" / f"{key}.png").shape == SIZE
        assert _png(out / "predictions" / f"{key}_prob.png").shape == SIZE
    lines = (out / "per_image.csv").read_text().splitlines()
    assert [ln.split(",")[0] for ln in lines[1:]] == ids
    for name in ("class_metrics", "roc_fov", "pr_fov", "confusion_fov", f"overlay_{ids[0]}"):
        assert _png(out / "plots" / f"{name}.png").ndim == 3


def test_exported_safetensors_evaluates_to_the_same_metrics(data, folder_metrics, tmp_path):
    single = tmp_path / "shared" / "vessels.safetensors"
    _run_ok("export", "--checkpoint", data["best"], "--format", "safetensors", "--out", single)
    alone = tmp_path / "alone" / "model.safetensors"  # no config.yaml beside it
    alone.parent.mkdir()
    shutil.copy(single, alone)
    m = _evaluate(data, alone, tmp_path / "ev")
    for region in ("fov", "image"):
        assert m[region] == folder_metrics[region]
    assert _without_seconds(tmp_path / "ev" / "per_image.csv") == \
        _without_seconds(data["best"].parent / "eval-shards-test" / "per_image.csv")


def _without_seconds(path: Path) -> list[list[str]]:
    """per_image.csv's rows without the timing column (timings differ between runs)."""
    import csv

    rows = list(csv.reader(path.read_text().splitlines()))
    col = rows[0].index("seconds")
    return [r[:col] + r[col + 1:] for r in rows]


def test_second_dataset_gets_its_own_folder_and_the_report_shows_both(data, folder_metrics):
    run = data["best"].parent
    r = cli("evaluate", "--checkpoint", data["best"], "--data", data["other"], "--split", "test",
            "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "estimate: 2 images x 4 windows" in r.stdout and "s per forward" in r.stdout
    first = json.loads((run / "eval-shards-test" / "metrics.json").read_text())
    second = json.loads((run / "eval-other-shards-test" / "metrics.json").read_text())
    assert first == folder_metrics  # untouched
    assert second["num_images"] == 2 and second["info"]["data"] == str(data["other"].resolve())
    assert sorted(p.name for p in (run / "eval-shards-test" / "predictions").iterdir()) == \
        sorted(f"{k}{s}.png" for k in _test_ids(data["raw"]) for s in ("", "_prob"))
    (run / "metrics.jsonl").write_text("")  # makes RUN a run folder for `report`
    assert cli("report", run).returncode == 0
    html = (run / "report.html").read_text()
    for folder in ("eval-shards-test", "eval-other-shards-test"):
        assert f"<h2>Evaluation: {folder}</h2>" in html
    assert str(data["other"].resolve()) in html and str(data["shards"].resolve()) in html
    for key in _test_ids(data["raw"]):
        assert f"<td>{key}</td>" in html  # the per-image table


def _test_ids(raw: Path) -> list[str]:
    return sorted(p.stem for p in (raw / "test" / "images").iterdir())


def test_out_holding_another_datasets_results_is_refused_unless_overwrite(data, tmp_path):
    out = tmp_path / "ev"
    _evaluate(data, data["best"], out)
    r = cli("evaluate", "--checkpoint", data["best"], "--data", data["other"], "--split", "test",
            "--out", out, "--quiet")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert "--overwrite" in r.stderr and str(data["shards"].resolve()) in r.stderr
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 3  # kept
    r = cli("evaluate", "--checkpoint", data["best"], "--data", data["other"], "--split", "test",
            "--out", out, "--overwrite", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 2
    other_ids = _test_ids(data["root"] / "raw2")
    assert sorted(p.name for p in (out / "predictions").iterdir()) == \
        sorted(f"{k}{s}.png" for k in other_ids for s in ("", "_prob"))  # no mixing


def test_whole_image_evaluation_scores_every_pixel_once(data, folder_metrics, tmp_path):
    m = _evaluate(data, data["best"], tmp_path / "whole", "eval.tile=0")
    assert m["settings"]["tile"] == 0
    assert m["fov"]["counts"] and sum(m["fov"]["counts"].values()) == \
        sum(folder_metrics["fov"]["counts"].values())
    assert abs(m["fov"]["auc_roc"] - folder_metrics["fov"]["auc_roc"]) < 0.1


def test_eval_overrides_change_the_threshold(data, folder_metrics, tmp_path):
    m = _evaluate(data, data["best"], tmp_path / "ev", "eval.threshold=0.3")
    assert m["settings"]["threshold"] == 0.3
    assert m["fov"]["counts"] != folder_metrics["fov"]["counts"]
    assert m["fov"]["auc_roc"] == folder_metrics["fov"]["auc_roc"]  # threshold-free


def test_onnx_export_matches_torch(data, tmp_path):
    import onnx
    import onnxruntime as ort

    from unetdist.eval.inference import load_for_inference

    out = tmp_path / "m.onnx"
    stdout = _run_ok("export", "--checkpoint", data["best"], "--format", "onnx", "--out", out)
    assert "matches torch" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no external data
    proto = onnx.load(str(out))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and isinstance(dims[2], str) and isinstance(dims[3], str)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["config"])["model"]["width"] == 8
    model, _ = load_for_inference(data["best"])
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    worst = 0.0
    for shape in ((2, 1, 59, 70), (1, 1, 64, 64)):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {"image": x.numpy()})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst < 1e-4


def test_predict_names_a_corrupt_file_and_processes_the_rest(data, tmp_path):
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    tifs = sorted((data["raw"] / "test" / "images").iterdir())
    shutil.copy(tifs[0], images / tifs[0].name)
    rgb = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tifs[1]).convert("RGB"))
    cv2.imwrite(str(images / "gray_small.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:50, :61])
    cv2.imwrite(str(images / "big.jpg"), cv2.resize(rgb[:, :, ::-1], (130, 117)))
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (images / "notes.txt").write_text("ignored")
    out = tmp_path / "pred"
    r = cli("predict", "--checkpoint", data["best"], "--images", images, "--out", out,
            "--fov", data["raw"] / "test" / "mask", "--quiet")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "broken.png" in r.stderr and "3 image(s)" in r.stdout
    assert not (out / "broken.png").exists()
    stem = tifs[0].stem
    expect = {stem: SIZE, "gray_small": (50, 61), "big": (117, 130)}
    for name, shape in expect.items():
        assert _png(out / f"{name}.png").shape == shape
        assert _png(out / f"{name}_prob.png").shape == shape
    # the DRIVE mask <stem>_mask.gif was found: nothing predicted outside it
    fov = _gif_mask(data["raw"] / "test" / "mask" / f"{stem}_mask.gif")
    assert _png(out / f"{stem}_prob.png")[~fov].max() == 0
    assert "gray_small" in r.stderr  # no mask for it: estimated, with a warning


def test_predict_without_fov_folder_exits_zero(data, tmp_path):
    from unetdist.cli import main  # in-process: predict builds no Accelerator

    images = tmp_path / "images"
    images.mkdir()
    tif = min((data["raw"] / "test" / "images").iterdir())
    shutil.copy(tif, images / tif.name)
    assert main(["predict", "--checkpoint", str(data["best"]), "--images", str(images),
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert _png(tmp_path / "o" / f"{tif.stem}.png").shape == SIZE


def test_estimated_fov_matches_the_true_mask(data):
    from PIL import Image

    from unetdist.eval.predict import estimate_fov

    for tif in sorted((data["raw"] / "test" / "images").iterdir()):
        rgb = np.asarray(Image.open(tif).convert("RGB"))
        est = estimate_fov(rgb)
        true = _gif_mask(data["raw"] / "test" / "mask" / f"{tif.stem}_mask.gif")
        assert est is not None
        assert (est & true).sum() / (est | true).sum() > 0.9
    assert estimate_fov(np.full((40, 50, 3), 128, np.uint8)) is None  # no dark border


def test_evaluate_missing_split_is_one_line_error(data, tmp_path):
    shards = tmp_path / "noval"
    shards.mkdir()
    for p in data["shards"].iterdir():
        if not p.name.startswith("val"):
            shutil.copy(p, shards / p.name)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["splits"].pop("val", None)
    manifest["total_bytes"] = sum(s["bytes"] for sp in manifest["splits"].values()
                                  for s in sp["shards"])
    (shards / "manifest.json").write_text(json.dumps(manifest))
    r = cli("evaluate", "--checkpoint", data["best"], "--data", shards, "--split", "val",
            "--out", tmp_path / "x")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error:") and "'val'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
