"""The Python API (`unetdist.load_model`) gives what `predict` writes, at the chosen threshold."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.eval_helpers import make_best_dir, tiny_config


def _gray(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    from unetdist.data.ingest.synth import write_synthetic

    root = tmp_path_factory.mktemp("api")
    raw = write_synthetic(root / "raw", n_train=0, n_test=2, size=(64, 72), seed=5,
                          progress=False)
    # a model trained with eval.threshold=auto whose validation chose 0.3
    best = make_best_dir(root / "run" / "best", tiny_config("eval.threshold=auto"), seed=2)
    (best / "metrics.json").write_text(json.dumps({"step": 7, "threshold": 0.3}))
    return {"images": raw / "test" / "images", "best": best, "root": root}


def test_api_equals_predict_and_uses_the_chosen_threshold(setup):
    from unetdist import load_model
    from unetdist.eval.predict import predict_images

    out = setup["root"] / "pred"
    report = predict_images([setup["best"]], setup["images"], out, progress=False)
    assert len(report.done) == 2
    model = load_model(setup["best"], device="cpu")
    assert model.threshold == 0.3 and "threshold 0.3" in repr(model)
    between = 0
    for name in report.done:
        path = setup["images"] / name
        stem = path.stem
        prob = model.predict(path)
        assert prob.dtype == np.float32 and prob.shape == (64, 72)
        png = _gray(out / f"{stem}_prob.png").astype(np.float64)
        assert np.abs(prob * 255.0 - png).max() <= 0.5 + 1e-3  # 8-bit rounding only
        mask = model.segment(path)
        assert mask.dtype == bool
        assert np.array_equal(mask, _gray(out / f"{stem}.png") > 0)  # predict's mask
        assert np.array_equal(mask, prob >= 0.3)
        between += int(((prob >= 0.3) & (prob < 0.5)).sum())
    assert between > 0  # the crafted case: 0.3 and 0.5 give different masks


def test_api_takes_arrays_files_and_overrides(setup):
    from PIL import Image

    from unetdist.errors import DataError
    from unetdist.eval.api import load_model
    from unetdist.eval.export import export_safetensors

    path = min(setup["images"].iterdir())
    rgb = np.asarray(Image.open(path).convert("RGB"))
    model = load_model(setup["best"])
    assert np.array_equal(model.predict(rgb), model.predict(path))
    fov = np.zeros(rgb.shape[:2], bool)
    fov[10:40, 10:50] = True
    assert model.predict(rgb, fov=fov)[~fov].max() == 0
    # an exported single file carries no metrics.json: a numeric override still applies
    single = export_safetensors(setup["best"], setup["root"] / "model.safetensors")
    assert load_model(single, overrides=["eval.threshold=0.4"]).threshold == 0.4
    with pytest.raises(DataError, match="HxWx3 uint8"):
        model.predict(rgb.astype(np.float32))


def test_import_unetdist_stays_light():
    code = "import sys, unetdist; print('torch' in sys.modules, callable(unetdist.load_model))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["False", "True"]


def test_a_training_process_starts_without_plotting_or_topology_libraries():
    """matplotlib and scikit-image cost every rank ~0.6 s of start-up; only evaluation and the
    end-of-run curves (rank 0) use them, so they are imported there."""
    code = ("import sys, unetdist.train.loop, unetdist.eval.evaluate; "
            "print(sorted(m for m in ('matplotlib', 'skimage', 'scipy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
