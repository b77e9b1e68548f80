"""`unetdist evaluate|predict --checkpoint A B ...` as the README shows it, and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.eval_helpers import make_best_dir, tiny_config
from tests.util import cli


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    root = tmp_path_factory.mktemp("enscli")
    raw = write_synthetic(root / "raw", n_train=1, n_test=2, size=(64, 72), seed=3,
                          progress=False)
    shard_dataset(raw, root / "shards", layout="drive", split_val=0.0)
    cfg = tiny_config("eval.num_overlays=0")
    models = [make_best_dir(root / f"fold{i}" / "best", cfg, seed=i) for i in range(2)]
    return {"root": root, "raw": raw, "models": models}


@pytest.mark.slow  # several full-image TTA passes per checkpoint
def test_predict_with_two_checkpoints_averages_their_probabilities(data):
    import cv2

    root, (a, b) = data["root"], data["models"]
    images = data["raw"] / "test" / "images"
    outs = {}
    for name, ckpts in (("a", [a]), ("b", [b]), ("ab", [a, b])):
        r = cli("predict", "--checkpoint", *ckpts, "--images", images, "--out",
                root / f"pred_{name}", "--no-progress", "eval.tta=dihedral")  # override last
        assert r.returncode == 0, r.stderr
        outs[name] = sorted((root / f"pred_{name}").glob("*_prob.png"))
    assert len(outs["ab"]) == 2
    for pa, pb, pab in zip(outs["a"], outs["b"], outs["ab"]):
        mean = (cv2.imread(str(pa), 0).astype(float) + cv2.imread(str(pb), 0)) / 2
        got = cv2.imread(str(pab), 0).astype(float)
        assert np.abs(got - mean).max() <= 1.0  # 8-bit rounding of each map


@pytest.mark.slow  # several full-image TTA passes per checkpoint
def test_evaluate_ensemble_records_its_members(data):
    out = data["root"] / "ens_eval"
    r = cli("evaluate", "--checkpoint", *data["models"], "--data", data["root"] / "shards",
            "--split", "test", "--out", out, "--no-progress", "eval.tta=flip")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["info"]["ensemble"] == 2 and len(m["info"]["checkpoint"]) == 2
    assert m["settings"]["tta"] == "flip" and m["num_images"] == 2


@pytest.mark.parametrize("case", ["no_out", "twice", "other_input"])
def test_ensemble_mistakes_are_one_line_errors(data, case):
    root, (a, b) = data["root"], data["models"]
    args = ["--data", root / "shards", "--split", "test", "--no-progress"]
    if case == "no_out":
        ckpts, want = [a, b], "--out is required"
    elif case == "twice":
        ckpts, want = [a, a], "is given twice"
        args += ["--out", root / "x"]
    else:
        rgb = make_best_dir(root / "rgb" / "best", tiny_config("data.channels=rgb"), seed=5)
        ckpts, want = [a, rgb], "data.channels='rgb'"
        args += ["--out", root / "y"]
    r = cli("evaluate", "--checkpoint", *ckpts, *args)
    assert r.returncode == 2 and want in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:")
