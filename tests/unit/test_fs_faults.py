"""Filesystem faults a user can cause are one clear error; the previous good state survives.

Tests run as root, where chmod does not make a folder read-only: faults are a file in the way
of a folder, or os-level failures (EROFS, ENOSPC) injected where the write happens.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
from pathlib import Path

import pytest
import torch

from tests.unit.test_checkpoint import _parts
from tests.unit.test_stage import make_shard_dir
from unetdist.data.stage.node import stage
from unetdist.errors import FileSystemError
from unetdist.models import weights
from unetdist.train import checkpoint as ck
from unetdist.train.runlock import RunLock


def _no_temporaries(run_dir: Path) -> None:
    left = [p for p in run_dir.rglob("*") if ".tmp-" in p.name]
    assert left == [], left


def _state(value: float) -> dict:
    return {"w": torch.full((4, 3), value), "b": torch.arange(3.0) * value}


def _export(run_dir: Path, value: float) -> Path:
    return ck.export_best(_state(value), {"model": {}}, "model: {}\n", {"dice": value},
                          int(value), run_dir)


def test_disk_full_while_writing_best_keeps_the_previous_best(tmp_path, monkeypatch):
    _export(tmp_path, 1.0)
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])  # half of it fits
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights, "open", lambda p, mode="r": Full(real_open(p, mode)),
                        raising=False)
    with pytest.raises(FileSystemError) as e:
        _export(tmp_path, 2.0)
    msg = str(e.value)
    assert f"cannot write the best model to {tmp_path / 'best'} (train.run_dir)" in msg
    assert "no space left on the device" in msg and "\n" not in msg
    monkeypatch.undo()
    sd, meta = weights.load_weights(tmp_path / "best" / "model.safetensors")
    assert torch.equal(sd["w"], _state(1.0)["w"]) and meta["step"] == "1"
    assert json.loads((tmp_path / "best" / "metrics.json").read_text())["dice"] == 1.0
    _no_temporaries(tmp_path)


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    from unetdist.distributed import forget_accelerator_state

    forget_accelerator_state()
    yield Accelerator(cpu=True)
    forget_accelerator_state()


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed "
                 "writing file data/0: file write failed"),  # what torch.save raises
    OSError(errno.EROFS, "Read-only file system"),
])
def test_failed_checkpoint_write_keeps_latest_and_leaves_no_temporary(tmp_path, accelerator,
                                                                      monkeypatch, failure):
    model = accelerator.prepare(torch.nn.Linear(3, 2))
    first = ck.save_checkpoint(accelerator, tmp_path, 2, _parts(2), 2)
    real = accelerator.save_state

    def partial(folder):
        real(folder)  # the files are there, then the disk fills
        raise failure

    monkeypatch.setattr(accelerator, "save_state", partial)
    with pytest.raises(FileSystemError, match=r"cannot write a checkpoint into .*checkpoints "
                                              r"\(train.run_dir\): .*(space|read-only)"):
        ck.save_checkpoint(accelerator, tmp_path, 4, _parts(4), 2)
    assert ck.read_latest(tmp_path) == first
    assert (ck.checkpoints_dir(tmp_path) / "latest").read_text() == "step-000002\n"
    _no_temporaries(tmp_path)
    accelerator.load_state(str(first))  # still loadable
    assert model is not None


def test_run_dir_on_a_read_only_file_system_is_one_line(tmp_path, monkeypatch):
    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(FileSystemError, match=r"cannot write to the run folder .*run "
                                              r"\(train.run_dir\): read-only file system; "
                                              "choose a writable folder"):
        RunLock(tmp_path / "run").acquire()


def test_run_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(FileSystemError, match="a file is in the way"):
        RunLock(tmp_path / "run").acquire()


def test_stage_into_a_file_or_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    src = tmp_path / "shared"
    make_shard_dir(src, n=2, size=1000)
    (tmp_path / "local").write_text("a file")
    with pytest.raises(FileSystemError, match=r"cannot stage into .*local \(data.local_dir\): "
                                              "a file is in the way"):
        stage(src, tmp_path / "local", progress=False, setting="data.local_dir")

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(FileSystemError, match=r"cannot stage into .*local2: read-only"):
        stage(src, tmp_path / "local2", progress=False)


def test_stale_temporaries_are_removed_and_reported(tmp_path):
    _export(tmp_path, 1.0)
    (ck.checkpoints_dir(tmp_path) / ".tmp-step-000004").mkdir(parents=True)
    (tmp_path / ".tmp-best").mkdir()
    (tmp_path / ".config.yaml.tmp-12-34").write_text("half")
    removed = ck.clean_stale(tmp_path)
    assert sorted(p.name for p in removed) == [".config.yaml.tmp-12-34", ".tmp-best",
                                               ".tmp-step-000004"]
    _no_temporaries(tmp_path)
    assert weights.load_weights(tmp_path / "best" / "model.safetensors")[1]["step"] == "1"


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_models_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        best = _export(tmp_path, 1.0)
        single = weights.save_weights(_state(1.0), tmp_path / "export.safetensors", {})
    finally:
        os.umask(old)
    for p in (best / "model.safetensors", best / "config.yaml", best / "metrics.json", single):
        assert p.stat().st_mode & 0o777 == mode, (p, oct(p.stat().st_mode))


def test_a_waiting_rank_on_an_unwritable_local_dir_is_one_line(tmp_path, monkeypatch):
    from unetdist.config import DataConfig
    from unetdist.data.stage.node import resolve_data_dir

    src = tmp_path / "shared"
    make_shard_dir(src, n=2, size=1000)
    (tmp_path / "local").write_text("a file")
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = DataConfig(shared_dir=str(src), local_dir=str(tmp_path / "local"), stage_timeout=5)
    with pytest.raises(FileSystemError, match=r"cannot wait for the staged copy in .*local "
                                              r"\(data.local_dir\).*: a file is in the way"):
        resolve_data_dir(cfg)
