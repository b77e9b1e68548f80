"""W&B tracker: offline run folder, run id and resume, replay de-duplication, disabled mode,
secret scrubbing. Never online: every test pins the mode (offline/disabled)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from unetdist.config import WandbConfig
from unetdist.errors import ConfigError
from unetdist.track.wandb_tracker import (
    MASKS_KEY,
    RUN_ID_FILE,
    STATE_FILE,
    STEP_METRIC,
    WandbTracker,
    resolve_mode,
    scrub,
    wandb_metrics,
)

FAKE_KEY = "f" * 8 + "0123456789abcdef" * 2 + "deadbeef"  # 40 hex chars, like a real key


@pytest.fixture
def wb_env(tmp_path, monkeypatch):
    """Offline W&B with its caches and config under tmp, no credentials from the user."""
    for k in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_NAME", "WANDB_TAGS",
              "WANDB_RUN_GROUP", "WANDB_DISABLED", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(k, raising=False)
    for k, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                   ("WANDB_DATA_DIR", "data"), ("NETRC", "netrc")):
        monkeypatch.setenv(k, str(tmp_path / "wandb-home" / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    yield tmp_path
    import wandb

    wandb.teardown()  # the next test starts from fresh wandb settings


def _wandb_files(run_dir: Path) -> list[Path]:
    return [p for p in (run_dir / "wandb").rglob("*.wandb") if p.is_file()]


def _folder_of(run_dir: Path, run_id: str) -> Path:
    (folder,) = [p.parent for p in _wandb_files(run_dir) if p.name == f"run-{run_id}.wandb"]
    return folder


def _images(n: int, h: int = 24, w: int = 32) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"key": f"img{i}", "rgb": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
             "pred": (rng.random((h, w)) > 0.5).astype(np.uint8),
             "label": (rng.random((h, w)) > 0.5).astype(np.uint8),
             "fov": (np.arange(w)[None, :].repeat(h, 0) > i).astype(np.uint8)}
            for i in range(n)]  # distinct FOVs: wandb stores identical masks only once


def test_metric_names_are_prefixed_by_split():
    split, data = wandb_metrics({"split": "val", "dice": 0.7, "counts": {"tp": 3},
                                 "note": "text", "step": 50}, 50)
    assert split == "val"
    assert data == {"val/dice": 0.7, "val/counts/tp": 3, STEP_METRIC: 50}
    assert wandb_metrics({"loss": np.float32(0.5), "lr": 1e-3}, 10)[1] == {
        "train/loss": 0.5, "train/lr": 1e-3, STEP_METRIC: 10}


def test_scrub_removes_key_values_but_keeps_git_hashes(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    git = "0123456789abcdef0123456789abcdef01234567"
    out = scrub({"api_key": "x", "nested": {"url": f"https://u:{FAKE_KEY}@h", "git": git},
                 "other": ["wandb_v1_" + "A" * 30], "lr": 0.1})
    assert out == {"api_key": "<redacted>", "nested": {"url": "https://u:<redacted>@h",
                                                       "git": git},
                   "other": ["<redacted>"], "lr": 0.1}


def test_mode_resolution_never_prompts(wb_env, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_mode(WandbConfig(mode="auto")) == "offline"  # no key anywhere
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(WandbConfig(mode="auto")) == "disabled"
    assert resolve_mode(WandbConfig(mode="offline")) == "offline"  # explicit config wins
    with pytest.raises(ConfigError, match=r"W&B online mode \(track.wandb.mode or WANDB_MODE\) needs an API key"):
        resolve_mode(WandbConfig(mode="online"))


def test_auto_is_online_only_with_a_key_and_a_reachable_host(wb_env, monkeypatch):
    import unetdist.track.wandb_tracker as wt

    monkeypatch.delenv("WANDB_MODE")
    netrc = Path(os.environ["NETRC"])
    netrc.parent.mkdir(parents=True, exist_ok=True)
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    assert wt.api_key_configured("https://api.wandb.ai")
    monkeypatch.setattr(wt, "_reachable", lambda url, timeout=3.0: False)  # no network here
    assert resolve_mode(WandbConfig(mode="auto")) == "offline"
    monkeypatch.setattr(wt, "_reachable", lambda url, timeout=3.0: True)
    assert resolve_mode(WandbConfig(mode="auto")) == "online"
    assert resolve_mode(WandbConfig(mode="online")) == "online"


def test_disabled_writes_nothing(wb_env):
    run_dir = wb_env / "run"
    t = WandbTracker(WandbConfig(mode="disabled"), run_dir, {"seed": 0})
    t.log({"split": "train", "loss": 1.0}, 1)
    t.log_masks(_images(1), 1)
    t.log_model(run_dir / "best")
    t.finish()
    assert t.run_id is None and not t.active
    assert not run_dir.exists()


@pytest.mark.slow  # a real wandb offline run and its service process
def test_offline_run_folder_id_and_metric_names(wb_env):
    run_dir = wb_env / "run"
    t = WandbTracker(WandbConfig(mode="offline", log_images=2), run_dir,
                     {"seed": 0, "optim": {"lr": 1e-3}})
    for step in (10, 20):
        t.log({"split": "train", "loss": 1.0 / step, "lr": 1e-3, "img_per_s": 12.5}, step)
    t.log({"split": "val", "dice": 0.61, "auc_roc": 0.9}, 20)
    images = _images(3)
    t.log_masks(images, 20)
    t.finish()

    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    assert run_id == t.run_id
    folders = [p.parent for p in _wandb_files(run_dir)]
    assert len(folders) == 1 and folders[0].name.endswith(f"-{run_id}")
    blob = (folders[0] / f"run-{run_id}.wandb").read_bytes()
    for name in ("train/loss", "train/lr", "train/img_per_s", "val/dice", "val/auc_roc",
                 STEP_METRIC, MASKS_KEY, "prediction", "ground_truth", "fov"):
        assert name.encode() in blob, name
    assert b"img0" in blob and b"img1" in blob and b"img2" not in blob  # log_images=2
    # the mask layers wandb stored are exactly our prediction, label and FOV (ids 0/2) masks
    media = folders[0] / "files" / "media" / "images"
    stored = sorted(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).tobytes()
                    for p in (media / "mask").rglob("*.png"))
    want = sorted(a.astype(np.uint8).tobytes() for im in images[:2]
                  for a in (im["pred"], im["label"], im["fov"] * 2))
    assert stored == want
    assert len(list((media / "val").glob("*.png"))) == 2
    assert t.sync_command() == f"wandb sync {folders[0]}"


@pytest.mark.slow  # two real wandb offline runs
def test_resume_reuses_run_id_and_skips_replayed_steps(wb_env, capfd):
    run_dir = wb_env / "run"
    cfg = WandbConfig(mode="offline")
    first = WandbTracker(cfg, run_dir, {"seed": 0})
    for step in (10, 20, 30):
        first.log({"split": "train", "loss": 0.5}, step)
    first.finish()
    run_id = first.run_id

    second = WandbTracker(cfg, run_dir, {"seed": 0})  # the id comes from run_dir
    assert second.run_id == run_id
    for step in (20, 30, 40):  # resumed from a step-20 checkpoint: 20 and 30 are replays
        second.log({"split": "train", "loss": 0.25 + step}, step)
    second.finish()
    err = capfd.readouterr().err

    folders = sorted(p.parent for p in _wandb_files(run_dir))
    assert len(folders) == 2 and all(f"-{run_id}" in f.name for f in folders)
    blob = (folders[1] / f"run-{run_id}.wandb").read_bytes()
    assert b"train/loss" in blob
    # 40.25 was logged; the replayed 20.25 / 30.25 were not (float64 little-endian in proto
    # or text in JSON: check the JSON-encoded history value wandb writes).
    assert b"40.25" in blob and b"20.25" not in blob and b"30.25" not in blob
    assert "wandb sync " + " ".join(map(str, folders)) in err

    third = WandbTracker(cfg, run_dir, {"seed": 0}, resume_id="abc123")  # id from a checkpoint
    third.finish()
    assert third.run_id == "abc123"
    assert (run_dir / RUN_ID_FILE).read_text().strip() == "abc123"

    fresh = WandbTracker(cfg, run_dir, {"seed": 0}, new_run=True)  # train.resume=none
    assert fresh.run_id not in (run_id, "abc123")
    fresh.log({"split": "train", "loss": 7.5}, 10)  # step 10 again, but in a new W&B run
    fresh.finish()
    blob = (_folder_of(run_dir, fresh.run_id) / f"run-{fresh.run_id}.wandb").read_bytes()
    assert b"7.5" in blob


def test_replays_after_a_hard_crash_are_logged_again(wb_env):
    import wandb

    run_dir = wb_env / "run"
    first = WandbTracker(WandbConfig(mode="offline"), run_dir, {"seed": 0})
    first.log({"split": "train", "loss": 0.125}, 10)
    first._run.finish()  # the process dies: W&B flushed, but our finish() never ran
    wandb.teardown()
    second = WandbTracker(WandbConfig(mode="offline"), run_dir, {"seed": 0})
    second.log({"split": "train", "loss": 0.375}, 10)  # replayed from a step-0 restart
    second.finish()
    assert second.run_id == first.run_id
    last = max(p.parent for p in _wandb_files(run_dir))
    assert b"0.375" in (last / f"run-{second.run_id}.wandb").read_bytes()


def test_fake_api_key_never_reaches_run_dir(wb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    run_dir = wb_env / "run"
    best = run_dir / "best"
    best.mkdir(parents=True)
    (best / "metrics.json").write_text('{"step": 20, "dice": 0.6}')
    (best / "model.safetensors").write_bytes(b"\0" * 64)
    config = {"seed": 0, "env": {"WANDB_API_KEY": FAKE_KEY}, "note": f"key={FAKE_KEY}",
              "track": {"wandb": {"mode": "offline"}}}
    t = WandbTracker(WandbConfig(mode="offline", log_model=True), run_dir, config)
    print(f"stdout line mentioning nothing secret, run {t.run_id}")
    t.log({"split": "train", "loss": 0.1}, 1)
    t.log_model(best)
    t.finish()

    files = [p for p in run_dir.rglob("*") if p.is_file()]  # follows symlinked logs too
    assert len(files) >= 5
    for p in files:
        assert FAKE_KEY.encode() not in p.resolve().read_bytes(), p
    assert "model-" + t.run_id in _wandb_files(run_dir)[0].read_bytes().decode("latin-1")
    assert os.environ["WANDB_API_KEY"] == FAKE_KEY  # scrubbing never touches the environment


def test_inside_a_sweep_the_agents_run_id_is_adopted(wb_env, monkeypatch):
    """`wandb agent` sets WANDB_SWEEP_ID and WANDB_RUN_ID; wandb then ignores our id."""
    run_dir = wb_env / "run"
    run_dir.mkdir()
    (run_dir / RUN_ID_FILE).write_text("prechosen1\n")  # e.g. a requeued job's old id
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun7")
    t = WandbTracker(WandbConfig(mode="offline"), run_dir, {"seed": 0, "optim": {"lr": 0.1}})
    t.log({"split": "train", "loss": 0.5}, 1)
    assert t.run_id == "agentrun7"
    assert (run_dir / RUN_ID_FILE).read_text().strip() == "agentrun7"
    t.finish()
    assert _folder_of(run_dir, "agentrun7").name.endswith("-agentrun7")
    assert t.sync_command() == f"wandb sync {_folder_of(run_dir, 'agentrun7')}"
    assert json.loads((run_dir / STATE_FILE).read_text())["run_id"] == "agentrun7"
