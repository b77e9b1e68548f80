"""Issue 18.8: doctor checks /dev/shm against the configured loader workers and the export extra."""

from __future__ import annotations

from collections import namedtuple

from tests.util import REPO, cli
from unetdist.config import load_config
from unetdist.tools import doctor

Usage = namedtuple("Usage", "total used free")


def test_shm_need_scales_with_workers_batch_and_crop():
    cfg = load_config(REPO / "configs" / "drive_unet.yaml").data
    one = doctor.shm_need_bytes(cfg, 1)
    assert one == cfg.num_workers * 2 * cfg.batch_size * cfg.crop ** 2 * (cfg.in_channels + 2) * 4
    assert doctor.shm_need_bytes(cfg, 4) == 4 * one


def test_docker_default_shm_is_a_problem_for_six_workers(tmp_path, monkeypatch):
    data = load_config(None, ["data.num_workers=6", "data.crop=256", "data.batch_size=8"]).data
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: Usage(2**26, 0, 2**26))  # 64 MiB
    r = doctor.run_doctor([], data, 1, shm=tmp_path)
    assert any("/dev/shm has 64 MiB free but data.num_workers=6" in p for p in r.problems)
    ok = doctor.run_doctor([], load_config(None, ["data.num_workers=1"]).data, 1, shm=tmp_path)
    assert not ok.problems


def test_export_extra_reported(monkeypatch):
    r = doctor.run_doctor([])
    assert any(ln.startswith("export extra") and "installed" in ln for ln in r.lines)
    monkeypatch.setattr(doctor, "_version", lambda p: "not installed" if p == "onnx" else "1")
    r = doctor.run_doctor([])
    assert any("missing onnx: pip install 'unetdist[export]'" in ln for ln in r.lines)


def test_doctor_cli_with_config():
    r = cli("doctor", "--config", REPO / "configs" / "demo.yaml")
    assert r.returncode == 0 and "/dev/shm free" in r.stdout and "worker(s) need" in r.stdout


