"""Issue 18.8: doctor checks /dev/shm against the configured loader workers and the export extra."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch

from tests.util import REPO, cli
from unetdist.config import load_config
from unetdist.tools import doctor

Usage = namedtuple("Usage", "total used free")


class _LocalRank0:
    local_process_index = 0


def _batch_bytes(data) -> int:
    """What one training batch of the real pipeline holds, measured on its tensors."""
    from unetdist.data.augment import view_size

    h, w = view_size(None, data)
    image = torch.zeros(data.batch_size, data.in_channels, h, w, dtype=torch.float32)
    masks = torch.zeros(2, data.batch_size, 1, h, w, dtype=torch.uint8)  # label, FOV
    return image.nbytes + masks.nbytes


@pytest.mark.parametrize("overrides", [
    [], ["data.crop=256", "data.batch_size=8", "data.num_workers=6"],
    ["data.resize=512", "data.crop=128", "data.channels=rgb", "data.num_workers=3"]])
def test_shm_need_is_workers_x_prefetch_x_the_batch_and_doctor_agrees(overrides, tmp_path,
                                                                     monkeypatch):
    from unetdist.train import setup

    cfg = load_config(REPO / "configs" / "drive_unet.yaml", overrides)
    data = cfg.data
    need = setup.shm_need(data, 4)
    assert need == 4 * data.num_workers * 2 * _batch_bytes(data)
    # doctor and the trainer's warning draw the line at the same number of free bytes
    for free, short in ((need - 1, True), (need, False)):
        monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p, f=free: Usage(2**40, 0, f))
        r = doctor.run_doctor([], data, 4, shm=tmp_path)
        assert any("/dev/shm has" in p for p in r.problems) == short
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
        warned = setup.warn_shm_shortage(cfg, _LocalRank0())
        assert (warned is not None) == short


def test_docker_default_shm_is_a_problem_for_six_workers(tmp_path, monkeypatch):
    # 6 workers x 2 batches x 16 x 256^2 px x (4 + 1 + 1) bytes = 72 MiB
    data = load_config(None, ["data.num_workers=6", "data.crop=256", "data.batch_size=16"]).data
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


