"""A real (tiny, single-process) training run seen through its trackers and its report. Trains:
slow tier."""

from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.util import cli, subprocess_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def offline_run(tiny_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("trackrun")
    env = subprocess_env(WANDB_MODE="offline", WANDB_API_KEY="f" * 40)
    r = cli("train", "model.width=8", "model.depth=3", "data.crop=48", "data.batch_size=2",
            "data.num_workers=0", "data.steps_per_epoch=3", "train.max_steps=6",
            "train.eval_every=3", "train.log_every=2", "eval.tile=64",
            "track.wandb.mode=offline", "track.wandb.log_images=2",
            f"data.shared_dir={tiny_shards}", f"train.run_dir={root / 'run'}", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "run", r


def test_wandb_offline_run_records_scalars_and_masks(offline_run):
    run_dir, r = offline_run
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    files = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    blob = files[0].read_bytes()
    for name in (b"train/loss", b"train/data_wait", b"train/img_per_s", b"val/dice",
                 b"val/predictions_wandb_delimeter_prediction",
                 b"val/predictions_wandb_delimeter_ground_truth",
                 b"val/predictions_wandb_delimeter_fov"):
        assert name in blob, name
    assert "wandb sync" in r.stderr + r.stdout


def test_api_key_never_written(offline_run):
    run_dir, _ = offline_run
    for p in run_dir.rglob("*"):
        if p.is_file():
            assert b"f" * 40 not in p.read_bytes(), p


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs).get("src", ""))


def test_report_of_a_real_run_embeds_decodable_images(offline_run):
    import base64

    import cv2
    import numpy as np

    run_dir, _ = offline_run
    r = cli("report", run_dir)
    assert r.returncode == 0, r.stderr
    html = Path(run_dir / "report.html").read_text()
    parser = _Images()
    parser.feed(html)
    assert parser.srcs and all(s.startswith("data:image/png;base64,") for s in parser.srcs)
    for s in parser.srcs:
        raw = np.frombuffer(base64.b64decode(s.split(",", 1)[1]), np.uint8)
        assert cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) is not None
