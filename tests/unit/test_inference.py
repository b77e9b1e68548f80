"""Sliding-window inference, flip TTA and loading a best model / exported file."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch import nn

from tests.eval_helpers import make_best_dir, tiny_config, tiny_model
from unetdist.config import EvalConfig
from unetdist.errors import UserError
from unetdist.eval.inference import load_for_inference, sliding_window_predict
from unetdist.eval.windows import tile_starts


class Pointwise(nn.Module):
    """A 1x1 conv: every tile predicts the same value for a pixel, so blending must give it."""

    def __init__(self, classes: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, classes, 1)
        self.seen: list[tuple] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return self.conv(x) * 3


@pytest.mark.parametrize("length,tile,overlap", [(100, 48, 0.25), (48, 48, 0.5), (61, 16, 0.0),
                                                 (200, 64, 0.9)])
def test_tile_starts_cover_the_axis_and_end_at_the_border(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == length - tile
    assert starts == sorted(set(starts))
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[s:s + tile] = True
    assert bool(covered.all())


@pytest.mark.parametrize("h,w", [(100, 77), (48, 48), (20, 33), (130, 40)])
def test_blended_windows_reproduce_a_pointwise_model(h, w):
    """Covers padding (images smaller than a tile) and border tiles: weights normalise exactly."""
    model = Pointwise()
    cfg = EvalConfig(tile=48, overlap=0.25, batch_size=4)
    x = torch.randn(1, 2, h, w)
    prob = sliding_window_predict(model, x, cfg)
    assert prob.shape == (1, 1, h, w) and prob.dtype == torch.float32
    torch.testing.assert_close(prob, torch.sigmoid(model.conv(x) * 3), atol=1e-6, rtol=1e-5)
    assert all(s[-2:] == (48, 48) and s[0] <= 4 for s in model.seen)


def test_two_class_model_uses_softmax_vessel_channel():
    model = Pointwise(classes=2)
    x = torch.randn(1, 2, 40, 52)
    prob = sliding_window_predict(model, x, EvalConfig(tile=32, overlap=0.5))
    torch.testing.assert_close(prob, torch.softmax(model.conv(x) * 3, 1)[:, 1:], atol=1e-6,
                               rtol=1e-5)


def test_batch_size_does_not_change_the_result_and_mode_is_restored():
    cfg = tiny_config()
    model = tiny_model(cfg).train()
    x = torch.randn(1, 1, 90, 75)
    a = sliding_window_predict(model, x, EvalConfig(tile=48, overlap=0.25, batch_size=1))
    b = sliding_window_predict(model, x, EvalConfig(tile=48, overlap=0.25, batch_size=5))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert model.training  # eval() inside, previous mode back afterwards
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_tta_equals_the_manual_flip_average():
    cfg = tiny_config()
    model = tiny_model(cfg, seed=3)
    x = torch.randn(1, 1, 70, 85)
    plain = EvalConfig(tile=48, overlap=0.25, batch_size=2)
    tta = EvalConfig(tile=48, overlap=0.25, batch_size=2, tta=True)
    manual = (sliding_window_predict(model, x, plain)
              + sliding_window_predict(model, x.flip(-1), plain).flip(-1)
              + sliding_window_predict(model, x.flip(-2), plain).flip(-2)
              + sliding_window_predict(model, x.flip(-2, -1), plain).flip(-2, -1)) / 4
    out = sliding_window_predict(model, x, tta)
    torch.testing.assert_close(out, manual, atol=1e-6, rtol=0)
    assert not torch.allclose(out, sliding_window_predict(model, x, plain), atol=1e-4)


def test_eval_resize_predicts_at_the_training_scale_and_returns_the_original_size():
    import torch.nn.functional as F

    cfg = tiny_config()
    model = tiny_model(cfg, seed=5)
    x = torch.randn(1, 1, 70, 85)
    native = EvalConfig(tile=48, overlap=0.25, batch_size=2)
    scaled = EvalConfig(tile=48, overlap=0.25, batch_size=2, resize=32)
    out = sliding_window_predict(model, x, scaled)
    small = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    manual = F.interpolate(sliding_window_predict(model, small, native), size=(70, 85),
                           mode="bilinear", align_corners=False)
    assert out.shape == (1, 1, 70, 85)
    torch.testing.assert_close(out, manual, atol=1e-6, rtol=0)


class _FakeAccelerator:
    mixed_precision = "bf16"

    def __init__(self) -> None:
        self.entered = 0

    @contextlib.contextmanager
    def autocast(self):
        self.entered += 1
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield


def test_autocast_under_mixed_precision_returns_float32():
    cfg = tiny_config()
    model = tiny_model(cfg)
    x = torch.randn(1, 1, 64, 64)
    acc = _FakeAccelerator()
    mixed = sliding_window_predict(model, x, EvalConfig(tile=48), accelerator=acc)
    full = sliding_window_predict(model, x, EvalConfig(tile=48))
    assert acc.entered > 0 and mixed.dtype == torch.float32
    assert float((mixed - full).abs().max()) < 0.05


def test_load_for_inference_from_folder_and_single_file(tmp_path):
    cfg = tiny_config("data.channels=rgb", "model.width=8")
    best = make_best_dir(tmp_path / "run" / "best", cfg, seed=5)
    ref = tiny_model(cfg, seed=5)
    x = torch.randn(2, 3, 40, 56)
    for path in (best, best / "model.safetensors"):
        model, loaded = load_for_inference(path)
        assert not model.training
        assert loaded.model.width == 8 and loaded.data.channels == "rgb"
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref(x), atol=0, rtol=0)


def test_load_for_inference_errors(tmp_path):
    from unetdist.models.weights import save_weights

    with pytest.raises(UserError, match="not found"):
        load_for_inference(tmp_path / "nope")
    cfg = tiny_config()
    lonely = tmp_path / "lonely.safetensors"
    save_weights(tiny_model(cfg), lonely, {"format": "unetdist-1"})
    with pytest.raises(UserError, match="no model config"):
        load_for_inference(lonely)
    other = tiny_config("model.width=4")
    from unetdist.config import to_dict

    wrong = tmp_path / "wrong.safetensors"
    save_weights(tiny_model(cfg), wrong, {"config": json.dumps(to_dict(other))})
    with pytest.raises(UserError, match="do not fit"):
        load_for_inference(wrong)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserError):
        load_for_inference(garbage)


# ----------------------------------------------------------------------------- evaluate_split


def _read_gray(path):
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def test_evaluate_split_counts_files_and_original_size(tmp_path):
    import csv

    import numpy as np

    from tests.eval_helpers import random_sample
    from unetdist.eval.evaluate import evaluate_split
    from unetdist.eval.metrics import MetricState

    cfg = tiny_config()
    model = tiny_model(cfg, seed=1)
    sizes = {"b_img": (70, 61), "a_img": (64, 90), "c_img": (50, 50)}
    samples = [random_sample(k, h, w, seed=i, label2=(k != "c_img"))
               for i, (k, (h, w)) in enumerate(sizes.items())]
    samples[2]["meta"].update(height=75, width=80)  # inferred at a resized resolution
    res = evaluate_split(model, samples, cfg.eval, out_dir=tmp_path / "ev", info={"x": 1})

    ref = MetricState(cfg.eval.auc_bins, cfg.eval.threshold)
    for s in samples:
        prob = sliding_window_predict(model, s["image"], cfg.eval) * s["fov"]  # FOV-masked
        ref.update(prob, s["label"], s["fov"], s.get("label2"))
        ref.add_topology(prob[0, 0].numpy() >= cfg.eval.threshold, s["label"][0, 0].numpy() > 0,
                         s["fov"][0, 0].numpy() > 0)
    assert res == {**ref.compute(), "per_image": res["per_image"],
                   "seconds_per_image": res["seconds_per_image"]}
    assert res["seconds_per_image"] > 0 and all(r["seconds"] > 0 for r in res["per_image"])
    # nothing is predicted outside the FOV: the whole image adds only true negatives there
    assert res["image"]["counts"]["fp"] == res["fov"]["counts"]["fp"]
    assert res["image"]["counts"]["tp"] == res["fov"]["counts"]["tp"]
    assert [r["key"] for r in res["per_image"]] == ["a_img", "b_img", "c_img"]
    assert res["second_observer"]["num_images"] == 2

    ev = tmp_path / "ev"
    doc = json.loads((ev / "metrics.json").read_text())
    assert doc["info"] == {"x": 1} and doc["num_images"] == 3
    assert doc["fov"]["counts"] == res["fov"]["counts"] and "regions" in doc
    assert set(doc["fov"]["counts"].values()) != {0}
    rows = list(csv.DictReader((ev / "per_image.csv").open()))
    assert [r["key"] for r in rows] == ["a_img", "b_img", "c_img"]
    assert int(rows[0]["fov_tp"]) == res["per_image"][0]["counts"]["tp"]
    assert rows[2]["second_observer_fov_dice"] == ""
    expect = {"a_img": (64, 90), "b_img": (70, 61), "c_img": (75, 80)}
    for key, shape in expect.items():
        binary = _read_gray(ev / "predictions" / f"{key}.png")
        prob = _read_gray(ev / "predictions" / f"{key}_prob.png")
        assert binary.shape == shape and prob.shape == shape and prob.dtype == np.uint8
        assert set(np.unique(binary)) <= {0, 255}
    # binary PNG = thresholded probability at the metric resolution
    p = sliding_window_predict(model, samples[1]["image"], cfg.eval)[0, 0].numpy()
    binary = _read_gray(ev / "predictions" / "a_img.png") > 0
    assert np.array_equal(binary, p >= cfg.eval.threshold)
    plots = {p.name for p in (ev / "plots").iterdir()}
    assert {"class_metrics.png", "roc_fov.png", "pr_fov.png", "confusion_fov.png",
            "confusion_image.png", "overlay_a_img.png", "overlay_b_img.png"} <= plots
    assert "overlay_c_img.png" not in plots  # num_overlays=2: the first two ids
    assert not [p for p in ev.rglob(".*")]  # no temp files left


def test_evaluate_split_with_no_samples_is_defined():
    from unetdist.eval.evaluate import evaluate_split

    cfg = tiny_config()
    res = evaluate_split(tiny_model(cfg), [], cfg.eval)
    assert res["num_images"] == 0 and res["per_image"] == []
    json.dumps(res, allow_nan=False)


def test_training_curves_plot(tmp_path):
    from unetdist.eval.plots import plot_training_curves

    recs = [{"step": s, "split": "train", "loss": 1 / s, "lr": 1e-3} for s in range(1, 40)]
    recs += [{"step": s, "split": "val", "loss": 0.5 / s, "dice": 0.5 + s / 100}
             for s in (10, 20, 30)]
    for records in (recs, recs[:5], []):
        out = plot_training_curves(records, tmp_path / "plots" / "loss.png")
        assert _read_gray(out).shape[0] > 100


def test_the_training_plot_is_redrawn_at_most_once_a_minute_and_at_the_end(tmp_path,
                                                                           monkeypatch):
    """A validation marks plots/loss.png stale; rank 0 redraws it when a minute has passed
    since the last draw, and at the end only when a validation came since."""
    import time
    from types import SimpleNamespace

    from unetdist.train import validation

    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "split": "train", "loss": 0.9, "lr": 0.001}\n'
        '{"step": 2, "split": "val", "loss": 0.8, "dice": 0.4}\n')
    png = tmp_path / "plots" / "loss.png"
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    run = SimpleNamespace(acc=SimpleNamespace(is_main_process=True), run_dir=tmp_path,
                          plotted_at=now[0], plot_stale=True)
    now[0] += 59
    validation.refresh_plot(run, final=False)
    assert not png.exists()  # within the minute
    now[0] += 2
    validation.refresh_plot(run, final=False)
    assert _read_gray(png).shape[0] > 100 and not run.plot_stale and run.plotted_at == now[0]
    png.unlink()
    validation.refresh_plot(run, final=True)
    assert not png.exists()  # nothing new since the draw
    run.plot_stale = True
    validation.refresh_plot(run, final=True)
    assert png.exists()
    png.unlink()
    run.plot_stale, run.acc.is_main_process = True, False
    validation.refresh_plot(run, final=True)
    assert not png.exists()  # other ranks never draw


def test_eval_overrides_only_touch_the_eval_section():
    from unetdist.config import config_from_dict, to_dict
    from unetdist.errors import ConfigError

    def with_eval_overrides(cfg, overrides):
        return config_from_dict(to_dict(cfg), overrides, only="eval")

    cfg = tiny_config()
    new = with_eval_overrides(cfg, ["eval.tta=true", "eval.threshold=0.3"])
    assert new.eval.tta and new.eval.threshold == 0.3 and new.data == cfg.data
    for bad, msg in ((["data.channels=rgb"], "only eval."), (["eval.threshold=1.5"],
                     "eval.threshold"), (["eval.nope=1"], "eval.nope")):
        with pytest.raises(ConfigError, match=msg):
            with_eval_overrides(cfg, bad)


def test_inference_follows_the_training_memory_format_and_precision():
    """Tiles take the model's channels_last format; without an accelerator `precision` is the
    training precision (bf16 autocast on CPU here); the result matches fp32 closely."""
    from unetdist.config import ModelConfig, RunConfig
    from unetdist.eval import inference
    from unetdist.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(in_channels=1, width=4, depth=2)).eval()
    cfg = RunConfig()
    cfg.model.channels_last = True
    cl = inference.apply_inference_format(build_model(ModelConfig(in_channels=1, width=4,
                                                                  depth=2)), cfg)
    cl.load_state_dict(model.state_dict())
    cl.eval()
    assert inference._memory_format(cl) == torch.channels_last
    assert inference._memory_format(model) == torch.contiguous_format
    seen = []
    cl.inc.register_forward_hook(lambda m, i, o: seen.append((i[0].is_contiguous(
        memory_format=torch.channels_last), o.dtype)))
    image = torch.rand(1, 1, 40, 44)
    ecfg = cfg.eval
    ecfg.tile = 32
    ref = inference.sliding_window_predict(model, image, ecfg)
    got = inference.sliding_window_predict(cl, image, ecfg, precision="bf16")
    assert seen and all(fmt and dtype == torch.bfloat16 for fmt, dtype in seen)
    assert got.dtype == torch.float32 and (got - ref).abs().max() < 0.05
