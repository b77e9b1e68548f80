"""`unetdist demo` end to end on a tiny setting: data, shards, staging, 2-process DDP training,
evaluation, report and summary, checked against the raw synthetic files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.util import REPO, cli, cli_subprocess

N_TRAIN, N_TEST, SIZE = 6, 3, 80
TINY = ["model.width=8", "data.crop=48", "data.batch_size=4", "data.num_workers=0",
        "train.eval_every=4", "checkpoint.every_steps=4", "eval.tile=64"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("demo") / "work"
    # a real process: the demo starts `accelerate launch`, whose output is part of what it shows
    r = cli_subprocess("demo", "--workdir", work, "--size", str(SIZE), "--n-train", str(N_TRAIN),
            "--n-test", str(N_TEST), "--steps", "8", "--nproc", "2", "--quiet", *TINY,
            timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {"work": work, "run": work / "run", "stdout": r.stdout, "stderr": r.stderr}


def _gif(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def _png(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


@pytest.mark.slow
@pytest.mark.dist
def test_demo_trains_with_ddp_and_stages(demo):
    run = demo["run"]
    info = json.loads((run / "runinfo.json").read_text())
    assert info["world_size"] == 2
    shared = json.loads((demo["work"] / "shared" / "manifest.json").read_text())
    local = json.loads((demo["work"] / "local" / "manifest.json").read_text())
    assert local["splits"] == shared["splits"]  # the trainer staged the "shared" copy
    assert shared["splits"]["train"]["samples"] + shared["splits"]["val"]["samples"] == N_TRAIN
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 8
    assert (run / "checkpoints").is_dir() and (run / "report.html").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.dist
def test_demo_best_model_carries_the_overrides(demo):
    from unetdist.eval.inference import load_for_inference

    model, cfg = load_for_inference(demo["run"] / "best")
    assert cfg.model.width == 8 and cfg.data.crop == 48
    assert Path(cfg.data.shared_dir) == (demo["work"] / "shared").absolute()
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow
@pytest.mark.dist
def test_demo_evaluation_matches_the_raw_files(demo):
    """Counts in metrics.json against FOV and vessel masks read from the raw GIFs."""
    raw = demo["work"] / "raw" / "test"
    fovs = {p.name.split("_")[0]: _gif(p) for p in sorted((raw / "mask").glob("*.gif"))}
    labels = {p.name.split("_")[0]: _gif(p) for p in sorted((raw / "1st_manual").glob("*.gif"))}
    assert len(fovs) == N_TEST
    ev = demo["run"] / "eval-test"
    m = json.loads((ev / "metrics.json").read_text())
    c = m["fov"]["counts"]
    assert m["num_images"] == N_TEST
    assert c["tp"] + c["fp"] + c["fn"] + c["tn"] == sum(int(f.sum()) for f in fovs.values())
    assert c["tp"] + c["fn"] == sum(int((labels[k] & fovs[k]).sum()) for k in fovs)
    tp_from_pngs = 0
    for k, fov in fovs.items():
        pred = _png(ev / "predictions" / f"{k}_test.png")
        prob = _png(ev / "predictions" / f"{k}_test_prob.png")
        assert pred.shape == prob.shape == (SIZE, SIZE)
        assert set(np.unique(pred)) <= {0, 255}
        tp_from_pngs += int(((pred > 0) & labels[k] & fov).sum())
    assert tp_from_pngs == c["tp"]


@pytest.mark.slow
@pytest.mark.dist
def test_demo_summary_points_at_the_outputs(demo):
    out, run = demo["stdout"], demo["run"]
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in out
    assert re.search(r"training\s+8 steps, \d+ img/s on average, \d+\.\d% of step time", out)
    m = json.loads((run / "eval-test" / "metrics.json").read_text())
    dice = re.search(r"test split, inside the FOV \(\d+ images\): Dice (\d\.\d{4})", out)
    assert dice and float(dice.group(1)) == pytest.approx(m["fov"]["dice"], abs=5e-5)
    for path in (run / "best" / "model.safetensors", run / "eval-test" / "predictions",
                 run / "report.html"):
        assert str(path) in out


def test_demo_refuses_a_foreign_workdir(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    r = cli("demo", "--workdir", tmp_path, "--steps", "1")
    assert r.returncode == 2 and "not made by the demo" in r.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_demo_bad_override_fails_before_any_work(tmp_path):
    r = cli("demo", "--workdir", tmp_path / "w", "optim.lr=-1")
    assert r.returncode == 2 and "optim.lr" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "w").exists()


def test_rerun_replaces_only_what_the_demo_wrote(tmp_path):
    from unetdist.tools.demo import MARKER, prepare_workdir

    prepare_workdir(tmp_path / "w")
    (tmp_path / "w" / "run").mkdir()
    (tmp_path / "w" / "run" / "old").write_text("x")
    (tmp_path / "w" / "notes.txt").write_text("mine")
    prepare_workdir(tmp_path / "w")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [MARKER, "notes.txt"]


def test_launch_command_topologies():
    from unetdist.tools.demo import Topology, launch_command

    cfg = REPO / "configs" / "demo.yaml"
    cpu2 = launch_command(cfg, ["a=1"], Topology(2, cuda=False), "no", 1234)
    assert "--multi_gpu" in cpu2 and cpu2[cpu2.index("--num_processes") + 1] == "2"
    assert cpu2[-4:] == ["train", "--config", str(cfg), "a=1"]
    gpu1 = launch_command(cfg, [], Topology(1, cuda=True), "bf16", 1234)
    assert "--multi_gpu" not in gpu1 and "--cpu" not in gpu1
    assert gpu1[gpu1.index("--mixed_precision") + 1] == "bf16"
    gpu8 = launch_command(cfg, [], Topology(8, cuda=True), "bf16", 1234)
    assert "--multi_gpu" in gpu8 and gpu8[gpu8.index("--num_processes") + 1] == "8"


@pytest.mark.slow
def test_demo_task_av_trains_and_scores_each_class(tmp_path):
    work = tmp_path / "work"
    # one process: the DDP path is the binary demo's test; this one is about the classes
    r = cli_subprocess("demo", "--task", "av", "--workdir", work, "--size", str(SIZE),
                       "--n-train", str(N_TRAIN), "--n-test", str(N_TEST), "--steps", "8",
                       "--nproc", "1", "--quiet", *TINY, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    manifest = json.loads((work / "shared" / "manifest.json").read_text())
    assert manifest["layout"] == "rite" and len(manifest["classes"]["entries"]) == 4
    metrics = json.loads((work / "run" / "eval-test" / "metrics.json").read_text())
    per_class = metrics["classes"]["per_class"]
    assert list(per_class) == ["background", "artery", "vein", "crossing"]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("test split"))
    assert f"artery {per_class['artery']['dice']:.4f}" in line
    assert f"A/V accuracy {metrics['av']['accuracy']:.4f}" in line
    assert "mean foreground Dice" in r.stdout
