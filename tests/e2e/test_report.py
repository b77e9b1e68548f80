"""`unetdist report RUN_DIR`: one self-contained HTML page whose embedded images all decode."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np

from tests.util import cli
from unetdist.config import RunConfig, to_yaml

FAKE_KEY = "0123456789abcdef" * 2 + "89abcdef"


class _Page(HTMLParser):
    """Collects <img src>, external references, section titles and table cells."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.external: list[str] = []
        self.h2: list[str] = []
        self.cells: list[str] = []
        self._tag = ""

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        for attr in ("src", "href"):
            if a.get(attr) and not a[attr].startswith("data:"):
                self.external.append(a[attr])
        if tag == "link" or (tag == "script" and a.get("src")):
            self.external.append(tag)

    def handle_data(self, data):
        if self._tag == "h2":
            self.h2.append(data.strip())
        if self._tag in ("td", "th"):
            self.cells.append(data.strip())


def _region(dice: float) -> dict:
    counts = {"tp": 900, "fp": 100, "fn": 150, "tn": 8850}
    return {"dice": dice, "iou_vessel": 0.7, "iou_background": 0.95, "miou": 0.825,
            "precision": 0.9, "recall": 0.857, "specificity": 0.989, "accuracy": 0.975,
            "mcc": 0.86, "auc_roc": 0.97, "auc_pr": None, "counts": counts}


def _tiny_run(run_dir: Path) -> None:
    run_dir.mkdir()
    cfg = RunConfig()
    cfg.track.wandb.project = "tiny"
    (run_dir / "config.yaml").write_text("# header comment\n" + to_yaml(cfg))
    (run_dir / "runinfo.json").write_text(json.dumps(
        {"world_size": 2, "host": "node1", "git": "f" * 40, "versions": {"torch": "2.14.1"},
         "argv": ["train", f"token={FAKE_KEY}"]}))
    lines = [{"step": s, "split": "train", "loss": 1.0 / s, "lr": 1e-3, "grad_norm": 0.5,
              "img_per_s": 40.0 + s, "data_wait": 0.1, "time": 1000.0 + s} for s in (10, 20, 30)]
    lines.append({"step": 30, "split": "val", "loss": 0.2, "dice": 0.61, "auc_roc": 0.9})
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 40, "spl')  # torn last line
    ev = run_dir / "eval-drive-shards-test"
    (ev / "plots").mkdir(parents=True)
    info = {"data": "/data/drive-shards", "manifest_hash": "ab" * 32, "split": "test",
            "checkpoint": "/runs/x/best", "step": "1234"}
    (ev / "metrics.json").write_text(json.dumps(
        {"info": info, "num_images": 2, "fov": _region(0.8123), "image": _region(0.7931),
         "settings": {"threshold": 0.5}, "seconds_per_image": 0.25}))
    (ev / "per_image.csv").write_text("key,height,width,fov_dice,fov_auc_roc,seconds\n"
                                      "01_test,40,60,0.7777,0.95,0.2\n"
                                      "02_test,40,60,0.6666,0.93,0.3\n")
    other = run_dir / "eval-chase-shards-test"  # a second dataset: its own section
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps(
        {"info": {**info, "data": "/data/chase-shards"}, "num_images": 1,
         "fov": _region(0.7001), "image": _region(0.6002)}))
    img = np.zeros((40, 60, 3), np.uint8)
    img[10:30, 20:40] = (0, 0, 255)
    cv2.imwrite(str(ev / "plots" / "roc_fov.png"), img)
    cv2.imwrite(str(ev / "plots" / "overlay_01_test.png"), img[:, ::-1])
    (ev / "plots" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")


def _decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    raw = np.frombuffer(base64.b64decode(uri.split(",", 1)[1], validate=True), np.uint8)
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    assert img is not None and img.size > 0
    return img


def test_report_renders_self_contained_page(tmp_path):
    run_dir = tmp_path / "tiny-run"
    _tiny_run(run_dir)
    r = cli("report", run_dir)
    assert r.returncode == 0, r.stderr
    out = run_dir / "report.html"
    assert r.stdout.strip() == str(out)
    text = out.read_text()
    page = _Page()
    page.feed(text)

    assert page.external == []
    assert page.h2 == ["Training curves", "Evaluation: eval-chase-shards-test",
                       "Evaluation: eval-drive-shards-test", "Throughput", "Environment",
                       "Config"]
    # curves + other scalars + per-class bars (drawn, twice) + the two PNGs of the drive folder
    assert len(page.images) == 6
    shapes = [_decode(u).shape for u in page.images]
    assert (40, 60, 3) in shapes  # the copied PNGs come through unchanged
    for want in ("0.8123", "0.7931", "0.7001", "/data/drive-shards", "/data/chase-shards",
                 "/runs/x/best", "1234", "01_test", "0.7777", "0.6666", "0.25", "img_per_s", "data_wait", "world_size", "2.14.1", "tiny",
                 "f" * 40):
        assert want in page.cells, want
    # what the tiny run lacks: confusion-matrix PNGs (both folders); the chase folder's ROC,
    # overlays and per_image.csv
    assert text.count("not available") == 5
    drive = text.index("Evaluation: eval-drive-shards-test")
    assert text.index("Confusion matrices", drive) < text.index("not available", drive) < \
        text.index("ROC", drive)
    assert FAKE_KEY not in text
    assert "broken.png: image does not decode" in text
    assert not list(run_dir.glob(".report.html.tmp*"))


def test_report_on_an_empty_run_dir_says_not_available(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")  # a run that has not logged anything yet
    r = cli("report", tmp_path)
    assert r.returncode == 0, r.stderr
    page = _Page()
    page.feed((tmp_path / "report.html").read_text())
    assert page.images == []
    assert (tmp_path / "report.html").read_text().count("not available") == 5


def test_report_on_a_missing_run_dir_is_one_line_exit_2(tmp_path):
    r = cli("report", tmp_path / "nope")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "run directory not found" in r.stderr
