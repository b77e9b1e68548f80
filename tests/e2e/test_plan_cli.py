"""`unetdist plan` and `unetdist inspect` on each public dataset's format twin.

plan: a fingerprint, one line per decision, the written path last, a config that loads, and
(once, DRIVE) that trains and stores data.scale for evaluation; the structure-scale rule on
twins drawn at 1x and 4x the vessel calibre. inspect: the page opened in headless Chromium.
The probe (a few timed optimizer steps) runs for real once, on DRIVE; elsewhere a fixed
measurement stands in, so four layouts do not cost four CPU probes.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import pytest
import yaml
from PIL import Image

from tests import twins
from tests.inproc import run_main
from tests.util import require
from unetdist.config import load_config

pytestmark = pytest.mark.slow

LAYOUTS = {
    "drive": lambda p: twins.make_drive(p, n_train=6, n_test=2, size=(96, 88)),
    "chase": lambda p: twins.make_chase(p, children=3, size=(100, 104)),
    "stare": lambda p: twins.make_stare(p, unlabelled=0, size=(84, 96)),
    "hrf": lambda p: twins.make_hrf(p, per_category=2, size=(80, 120)),
}


def _main(*args) -> tuple[int, str, str]:
    """In this process (tests/inproc.py): its accelerate state is not an earlier test's."""
    r = run_main([str(a) for a in args])
    return r.returncode, r.stdout, r.stderr


def _ok(*args) -> str:
    rc, out, err = _main(*args)
    assert rc == 0, (out + err)[-3000:]
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("plan")
    out = {}
    for layout, make in LAYOUTS.items():
        raw = make(root / f"raw-{layout}")
        _ok("shard", raw, root / f"shards-{layout}", "--layout", layout, "--quiet")
        out[layout] = root / f"shards-{layout}"
    return out


@pytest.fixture
def fake_probe(monkeypatch):
    from unetdist.plan import make
    from unetdist.plan.probe import Probe

    monkeypatch.setattr(make, "measure_step", lambda cfg, device, batch_size=None:
                        Probe(0.5, "cpu", "no", None))


def _decisions(out: str) -> dict[str, str]:
    block = out.split("plan (from ")[1].split("differences from")[0]
    return dict(re.match(r"\s+(.+?) = (.*)", line).groups()
                for line in block.splitlines()[1:] if line.strip())


@pytest.mark.parametrize("layout", ["chase", "stare", "hrf"])
def test_plan_prints_fingerprint_and_decisions_and_writes_a_config(shards, layout, tmp_path,
                                                                   fake_probe):
    out_file = tmp_path / "p.yaml"
    out = _ok("plan", shards[layout], "--minutes", "3", "--out", out_file)
    for what in ("image size: median", "FOV diameter", "label fraction inside the FOV",
                 "vessel calibre: median", "green inside the FOV: mean"):
        assert what in out
    decided = _decisions(out)
    for key in ("data.scale", "data.crop", "data.batch_size", "data.channels",
                "data.normalize", "eval.tile", "eval.overlap", "train.max_steps",
                "optim.schedule_by"):
        assert key in decided and ": " in decided[key], key
    assert out.strip().splitlines()[-1] == f"wrote {out_file}"
    cfg = load_config(out_file)
    assert cfg.optim.schedule_by == "time" and cfg.train.max_minutes == 3.0
    # 0.5 s per step (the stand-in probe): 360 steps in 3 minutes, 1.5x as the ceiling
    assert cfg.train.max_steps == 541
    assert cfg.data.shared_dir == str(shards[layout].absolute())
    assert cfg.eval.scale == cfg.data.scale and cfg.data.crop % 16 == 0


def test_plan_drive_probes_and_trains(shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = _ok("plan", shards["drive"], "--minutes", "1")
    path = tmp_path / "plan-shards-drive.yaml"
    assert out.strip().splitlines()[-1] == f"wrote {path}"
    rate = float(re.search(r"train.max_steps = \d+: ([\d.]+) s/step measured", out).group(1))
    cfg = load_config(path)
    # the plan divides by the measured rate, the line prints it to 3 decimals
    steps = [int(max(1, int(60 / r)) * 1.5) + 1 for r in (rate + 0.0005, rate - 0.0005)]
    assert steps[0] <= cfg.train.max_steps <= steps[1]
    assert "differences from configs/drive_cpu.yaml" in out
    assert path.read_text().startswith("# planned by `unetdist plan")
    run = tmp_path / "run"
    _ok("train", "--config", path, "train.max_steps=2", "model.width=4", "model.depth=3",
        "data.num_workers=0", "train.eval_every=0", "train.progress=false", "eval.tta=none",
        "eval.num_overlays=0", f"train.run_dir={run}", "track.wandb.mode=disabled")
    stored = yaml.safe_load((run / "best" / "config.yaml").read_text())
    assert stored["data"]["scale"] == cfg.data.scale != 1.0
    assert stored["eval"]["scale"] == cfg.data.scale  # evaluate/predict rescale like training
    _ok("evaluate", "--checkpoint", run / "best", "--data", shards["drive"], "--split", "test",
        "--quiet")
    out_dir = run / f"eval-{Path(shards['drive']).name}-test"  # one folder per data + split
    rows = list(csv.DictReader((out_dir / "per_image.csv").open()))
    assert rows and {float(r["scale"]) for r in rows} == {cfg.data.scale}
    assert {(int(r["height"]), int(r["width"])) for r in rows} == {(96, 88)}  # native size out


def test_plan_for_cuda_from_the_gpu_recipe(shards, tmp_path, fake_probe):
    import torch

    out = _ok("plan", shards["chase"], "--device", "cuda", "--gpus", "4", "--minutes", "5",
              "--out", tmp_path / "c.yaml")
    assert "plan (from configs/drive_unet.yaml, --device cuda, --gpus 4" in out
    decided = _decisions(out)
    cfg = load_config(tmp_path / "c.yaml")
    assert decided["global batch"].startswith(f"{4 * cfg.data.batch_size}: 4 GPUs x ")
    assert cfg.optim.schedule_by == "time" and cfg.train.max_minutes == 5.0
    if not torch.cuda.is_available():  # nothing to measure: the recipe's batch, said so
        assert cfg.data.batch_size == 8 and "no CUDA device here" in decided["data.batch_size"]


def _upscaled_tree(src, dst, factor: int) -> None:
    """The same DRIVE-layout dataset with every picture FACTOR x larger: vessels FACTOR x wider."""
    for p in src.rglob("*"):
        q = dst / p.relative_to(src)
        if p.is_dir():
            q.mkdir(parents=True, exist_ok=True)
            continue
        im = Image.open(p)
        smooth = p.suffix == ".tif"  # photographs; labels and FOV masks stay binary
        im.resize((im.width * factor, im.height * factor),
                  Image.BICUBIC if smooth else Image.NEAREST).save(q, format=im.format)


def test_planned_scale_follows_the_vessel_calibre(tmp_path):
    from unetdist.plan.fingerprint import fingerprint
    from unetdist.plan.planner import Plan, decide_scale

    small = twins.make_drive(tmp_path / "raw1", n_train=4, n_test=1, size=(96, 88))
    _upscaled_tree(small, tmp_path / "raw4", 4)
    scales = []
    for name in ("raw1", "raw4"):
        _ok("shard", tmp_path / name, tmp_path / f"s-{name}", "--layout", "drive", "--quiet")
        scales.append(decide_scale(Plan("r", {}, []), fingerprint(str(tmp_path / f"s-{name}"))))
    assert scales[0] / scales[1] == pytest.approx(4.0, rel=0.10)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_inspect_page_opens_in_headless_chromium(shards, tmp_path):
    out = _ok("inspect", shards["drive"], "--out", tmp_path / "page")
    page = tmp_path / "page" / "index.html"
    assert out.strip().splitlines()[-1] == f"wrote {page}"
    assert "vessel calibre: median" in out and "FOV source: given" in out
    montage = cv2.imread(str(tmp_path / "page" / "montage.png"))
    assert montage is not None and montage.shape[0] >= 100
    browser = _chromium()
    require(browser is not None, "Chromium is not installed (Debian: apt-get install -y "
            "chromium); the inspect page cannot be opened")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu"]
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert re.search(r'<img id="montage" src="montage.png"', dom)
    splits = re.search(r'<table id="splits">(.*?)</table>', dom).group(1)
    assert [m for m in re.findall(r"<tr><td>(\w+)</td>", splits)] == ["train", "val", "test"]
    assert '<pre id="fingerprint">' in dom and 'id="outliers"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run(flags + ["--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    img = cv2.imread(str(shot))[..., ::-1].astype(int)
    red = (img[..., 0] > 180) & (img[..., 1] < 110) & (img[..., 2] < 110)
    assert red.sum() > 200, "the montage's label overlay was not rendered"


def test_plan_on_av_shards_follows_the_class_table(tmp_path, fake_probe):
    raw = twins.make_rite(tmp_path / "raw", n_train=4, n_test=1, size=(96, 88))
    _ok("shard", raw, tmp_path / "shards", "--layout", "rite", "--quiet")
    out = _ok("plan", tmp_path / "shards", "--out", tmp_path / "p.yaml")
    decided = _decisions(out)
    assert decided["model.num_classes"].startswith("4: ")
    assert decided["loss.name"].startswith("ce_dice: ")
    assert decided["loss.ignore_index"].startswith("255: ")
    assert decided["data.channels"].startswith("rgb: ")
    cfg = load_config(tmp_path / "p.yaml")
    assert (cfg.model.num_classes, cfg.loss.name, cfg.loss.ignore_index) == (4, "ce_dice", 255)
    _ok("train", "--check", "--config", tmp_path / "p.yaml")  # the shards' checks accept it
