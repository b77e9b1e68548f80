"""Evaluating and predicting multi-class (artery/vein) models: metrics against sklearn, class
probabilities through windows/TTA/resizing, colour-coded files, the class table beside the
model, the report's per-class section; binary results unchanged."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score, jaccard_score
from torch import nn

from tests.av_shards import av_shards, av_table
from tests.eval_helpers import make_best_dir, random_sample, tiny_config, tiny_model
from unetdist.config import EvalConfig
from unetdist.errors import ConfigError, DataError

AV = ("model.num_classes=4", "loss.name=ce", "loss.ignore_index=255", "data.channels=rgb")


class Pointwise(nn.Module):
    """A 1x1 conv over RGB: translation-equivariant, so any tiling must give the whole-image
    softmax; its classes follow the pixel colours, so the argmax map is not constant."""

    def __init__(self, k: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, k, 1)

    def forward(self, x):
        return self.conv(x) * 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return av_shards(tmp_path_factory.mktemp("av"), n_train=1, n_val=1, n_test=3,
                     size=(72, 88))


def _samples(shards, cfg):
    from unetdist.data.pipeline import eval_samples

    return list(eval_samples(cfg.data, str(shards), "test", rank=0, world_size=1))


def _reference(model, samples, ecfg):
    """Independent of the evaluator: argmax of the class probabilities inside FOV & not ignore."""
    from unetdist.eval.inference import sliding_window_predict

    truth, pred, probs = [], [], []
    for s in samples:
        p = sliding_window_predict(model, s["image"], ecfg, classes=True)[0].numpy()
        lab = s["label"][0, 0].numpy().astype(np.int64)
        keep = (s["fov"][0, 0].numpy() > 0.5) & (lab != 255)
        truth.append(lab[keep])
        pred.append(p.argmax(0)[keep])
        probs.append(p)
    return truth, pred, probs


def test_evaluate_split_per_class_metrics_equal_sklearn(shards, tmp_path):
    from unetdist.eval.evaluate import evaluate_split, summary_line

    cfg = tiny_config(*AV)
    model, table = Pointwise(), av_table()
    samples = _samples(shards, cfg)
    res = evaluate_split(model, samples, cfg.eval, out_dir=tmp_path / "ev", table=table,
                         progress=False)
    truth, pred, _ = _reference(model, samples, cfg.eval)
    t, p = np.concatenate(truth), np.concatenate(pred)
    assert len(np.unique(p)) >= 3  # a real test: the prediction is not one class
    labels = list(range(4))
    c = res["classes"]
    np.testing.assert_array_equal(c["confusion"], confusion_matrix(t, p, labels=labels))
    dice = f1_score(t, p, labels=labels, average=None, zero_division=1.0)
    iou = jaccard_score(t, p, labels=labels, average=None, zero_division=1.0)
    for i, name in enumerate(table.names):
        assert c["per_class"][name]["dice"] == pytest.approx(dice[i], abs=1e-12)
        assert c["per_class"][name]["iou"] == pytest.approx(iou[i], abs=1e-12)
    assert c["pixel_accuracy"] == pytest.approx(np.mean(t == p))
    assert c["mean_iou"] == pytest.approx(np.mean(iou))  # every class present in the truth
    both = np.isin(t, (1, 2)) & np.isin(p, (1, 2))  # artery/vein in truth and prediction
    assert res["av"]["accuracy"] == pytest.approx(np.mean(t[both] == p[both]))
    vessel_f1 = f1_score(t > 0, p > 0)
    assert res["av"]["vessel_f1"] == pytest.approx(vessel_f1)
    rows = list(csv.DictReader((tmp_path / "ev" / "per_image.csv").read_text().splitlines()))
    assert [r["key"] for r in rows] == sorted(s["key"] for s in samples)
    for r, ti, pi in zip(rows, truth, pred):
        assert float(r["dice_vein"]) == pytest.approx(f1_score(ti == 2, pi == 2,
                                                               zero_division=1.0))
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["classes"]["confusion"] == c["confusion"] and "argmax" in doc["prediction"]
    line = summary_line(res)
    assert f"artery {c['per_class']['artery']['dice']:.4f}" in line and "A/V acc" in line


@pytest.mark.parametrize("tta", ["none", "dihedral"])
def test_windows_equal_whole_image_and_probabilities_sum_to_one(tta):
    from unetdist.eval.inference import sliding_window_predict

    model = Pointwise()
    x = torch.randn(1, 3, 61, 77)
    got = sliding_window_predict(model, x, EvalConfig(tile=32, overlap=0.5, tta=tta,
                                                      batch_size=3), classes=True)
    torch.testing.assert_close(got, torch.softmax(model(x), 1), atol=1e-6, rtol=1e-5)
    unet = tiny_model(tiny_config(*AV), seed=2)
    for ecfg, scale in ((EvalConfig(tile=48, overlap=0.25, tta=tta), 1.0),
                        (EvalConfig(tile=0, tta=tta), 0.7)):  # resized back: linear blend
        p = sliding_window_predict(unet, x, ecfg, classes=True, scale=scale)
        assert p.shape == (1, 4, 61, 77) and float(p.min()) >= 0
        torch.testing.assert_close(p.sum(1), torch.ones(1, 61, 77), atol=1e-5, rtol=0)


def test_binary_table_takes_the_binary_path_unchanged(tmp_path):
    from unetdist.data.classes import ClassTable
    from unetdist.eval.evaluate import evaluate_split

    cfg = tiny_config()
    model = tiny_model(cfg, seed=1)
    samples = [random_sample(f"s{i}", 50, 60, seed=i) for i in range(2)]
    a = evaluate_split(model, samples, cfg.eval, progress=False)
    b = evaluate_split(model, samples, cfg.eval, table=ClassTable.binary(), progress=False)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("per_image",
                                                                "seconds_per_image")}
    assert strip(a) == strip(b) and "fov" in a and "classes" not in a


def test_prediction_files_use_the_table_colours_and_the_probabilities(shards, tmp_path):
    from unetdist.eval.evaluate import evaluate_split

    cfg = tiny_config(*AV)
    model, table = Pointwise(seed=3), av_table()
    samples = _samples(shards, cfg)
    evaluate_split(model, samples, cfg.eval, out_dir=tmp_path, table=table, progress=False)
    _, _, probs = _reference(model, samples, cfg.eval)
    for s, p in zip(samples, probs):
        fov = s["fov"][0, 0].numpy()
        p = p * fov
        p[0] += 1 - fov  # outside the FOV: background
        colour = cv2.cvtColor(cv2.imread(str(tmp_path / "predictions" / f"{s['key']}.png")),
                              cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(colour, table.colourize(p.argmax(0).astype(np.uint8)))
        used = {tuple(c) for c in colour.reshape(-1, 3)}
        assert used <= {tuple(c) for c in table.colours.tolist()} and len(used) >= 3
        maps = np.stack([cv2.imread(str(tmp_path / "predictions" / f"{s['key']}.{n}.png"),
                                    cv2.IMREAD_UNCHANGED) for n in table.names])
        assert maps.dtype == np.uint8 and np.abs(maps / 255.0 - p).max() <= 0.5 / 255 + 1e-6
    assert (tmp_path / "plots" / "confusion_classes.png").is_file()
    assert (tmp_path / "plots" / "class_metrics.png").is_file()


def test_model_outputs_must_fit_the_shards_classes(shards, tmp_path):
    from unetdist.eval.classes_io import write_classes_json
    from unetdist.eval.evaluate import evaluate_checkpoints

    binary = make_best_dir(tmp_path / "bin" / "best", tiny_config("data.channels=rgb"))
    with pytest.raises(ConfigError, match=r"has 1 outputs .* need 4") as e:
        evaluate_checkpoints([binary], shards, "test", progress=False)
    assert "\n" not in str(e.value)
    other = make_best_dir(tmp_path / "other" / "best", tiny_config(*AV))
    from unetdist.data.classes import ClassTable

    swapped = ClassTable.from_specs(["background=0,0,0", "vein=0,0,255", "artery=255,0,0",
                                     "crossing=0,255,0"])
    write_classes_json(other, swapped)
    with pytest.raises(DataError, match="trained on the classes background, vein, artery"):
        evaluate_checkpoints([other], shards, "test", progress=False)


def test_report_shows_the_per_class_tables_and_the_confusion_plot(shards, tmp_path):
    from unetdist.eval.evaluate import evaluate_checkpoints
    from unetdist.track.report import render_report

    best = make_best_dir(tmp_path / "run" / "best", tiny_config(*AV))
    job = evaluate_checkpoints([best], shards, "test", progress=False)
    assert (job.out_dir / "plots" / "confusion_classes.png").is_file()
    page = render_report(tmp_path / "run")
    assert 'alt="confusion_classes.png"' in page and "Per-class metrics" in page
    assert "A/V accuracy" in page and "Dice artery" in page  # per-image column


def test_predict_and_export_carry_the_class_table(shards, tmp_path):
    from unetdist.data.classes import ClassTable
    from unetdist.eval.classes_io import write_classes_json
    from unetdist.eval.export import export_safetensors
    from unetdist.eval.predict import predict_images, split_outputs
    from unetdist.models.weights import load_weights

    table = av_table()
    best = make_best_dir(tmp_path / "run" / "best", tiny_config(*AV))
    assert write_classes_json(best, table) is not None
    assert write_classes_json(tmp_path, ClassTable.binary()) is None  # binary: no file
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "a.png"), rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))
    rep = predict_images([best], images, tmp_path / "p1", progress=False)
    assert rep.done == ["a.png"] and not rep.failed
    names = sorted(p.name for p in (tmp_path / "p1").iterdir())
    assert names == sorted(["a.png", "a.overlay.png", *(f"a.{n}.png" for n in table.names)])
    colour = cv2.cvtColor(cv2.imread(str(tmp_path / "p1" / "a.png")), cv2.COLOR_BGR2RGB)
    assert colour.shape == (70, 90, 3)
    assert {tuple(c) for c in colour.reshape(-1, 3)} <= {tuple(c) for c in table.colours.tolist()}
    exported = export_safetensors(best, tmp_path / "m.safetensors")
    assert json.loads(load_weights(exported)[1]["classes"]) == table.to_manifest()
    predict_images([exported], images, tmp_path / "p2", progress=False)
    for n in names:  # the exported file alone gives the same files
        assert (tmp_path / "p2" / n).read_bytes() == (tmp_path / "p1" / n).read_bytes()
    paths = [tmp_path / "p1" / n for n in [*names, "b.png"]]
    inputs, earlier = split_outputs(paths)  # earlier outputs are never taken for inputs
    assert inputs == [tmp_path / "p1" / "b.png"] and len(earlier) == len(names)


def test_onnx_export_names_the_classes(tmp_path):
    pytest.importorskip("onnx")
    import onnx

    from unetdist.eval.classes_io import write_classes_json
    from unetdist.eval.export import export_onnx

    best = make_best_dir(tmp_path / "run" / "best", tiny_config(*AV))
    write_classes_json(best, av_table())
    export_onnx(best, tmp_path / "m.onnx", check=False)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == av_table().to_manifest()
    assert proto.doc_string.endswith(props["classes"]) and "argmax" in proto.doc_string
