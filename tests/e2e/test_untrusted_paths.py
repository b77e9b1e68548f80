"""Names from shards and file systems never choose where files go, and every folder a user
names for output fails in one line (issue 24 cases 1, 7, 8, 12; issue 23's predict frictions).

In-process (`unetdist.cli.main` + capsys) where a crash cannot take pytest down; the non-UTF-8
file name crashed OpenCV with a segmentation fault, so that one runs in a subprocess.
Tests run as root, where chmod does not make a folder read-only: read-only and full file
systems are os-level failures injected where the write happens (unetdist.atomic).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.eval_helpers import make_best_dir, tiny_config
from tests.util import cli as cli_subprocess
from unetdist import atomic
from unetdist.cli import main


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error(code: int, err: str) -> str:
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(raw dataset, shards, best/ of a tiny model) shared by the module; tests copy shards."""
    root = tmp_path_factory.mktemp("untrusted-paths")
    assert main(["synth", str(root / "raw"), "--n-train", "2", "--n-test", "1", "--size",
                 "64x64", "--quiet"]) == 0
    assert main(["shard", str(root / "raw"), str(root / "shards"), "--layout", "drive",
                 "--quiet"]) == 0
    return root / "raw", root / "shards", make_best_dir(root / "best", tiny_config())


def _rekey(shards: Path, key: str) -> None:
    """Rename the test sample of SHARDS to KEY inside its tar; the manifest is kept consistent
    (size and hash), as someone who can write the shard folder would do."""
    tar = shards / "test-000000.tar"
    with tarfile.open(tar) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    old = members[0][0].name.split(".")[0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for m, data in members:
            info = tarfile.TarInfo(key + m.name[len(old):])
            info.size, info.mtime = len(data), m.mtime
            tf.addfile(info, io.BytesIO(data))
    tar.write_bytes(buf.getvalue())
    manifest = json.loads((shards / "manifest.json").read_text())
    entry = manifest["splits"]["test"]["shards"][0]
    entry.update(bytes=len(buf.getvalue()), sha256=hashlib.sha256(buf.getvalue()).hexdigest())
    (shards / "manifest.json").write_text(json.dumps(manifest))


def _listing(root: Path, skip: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if skip != p and skip not in p.parents}


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_a_shard_key_never_writes_outside_out(made, tmp_path, capsys, how):
    shards = tmp_path / "shards"
    shutil.copytree(made[1], shards)
    out = tmp_path / "a" / "b" / "out"
    out.parent.mkdir(parents=True)
    key = str(tmp_path / "planted" / "pwn") if how == "absolute" else "../../../../pwn"
    _rekey(shards, key)
    before = _listing(tmp_path, out) | _listing(tmp_path.parent, tmp_path)
    code, _, err = run(capsys, "evaluate", "--checkpoint", made[2], "--data", shards,
                       "--out", out, "--quiet")
    line = one_error(code, err)
    assert "is not a sample id" in line and "test-000000.tar" in line
    assert ("'../../../../pwn'" if how == "dotdot" else f"'{str(tmp_path)[:20]}") in line
    assert _listing(tmp_path, out) | _listing(tmp_path.parent, tmp_path) == before
    assert not list(out.rglob("*.png"))


def test_evaluate_progress_is_full_lines_and_a_symlink_is_replaced_not_followed(
        made, tmp_path, capsys):
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    (out / "predictions").mkdir(parents=True)
    (out / "predictions" / "01_test.png").symlink_to(victim)  # planted before the run
    code, _, err = run(capsys, "evaluate", "--checkpoint", made[2], "--data", made[1],
                       "--out", out)
    assert code == 0, err[-3000:]
    assert victim.read_bytes() == b"precious"
    pred = out / "predictions" / "01_test.png"
    assert not pred.is_symlink() and cv2.imread(str(pred)) is not None
    assert "evaluate: 1/1 img" in err and "\r" not in err  # log files get lines, not redraws


@pytest.mark.parametrize("kind", ["file", "symlink to a file", "dangling symlink"])
def test_evaluate_out_that_is_not_a_folder_is_one_line(made, tmp_path, capsys, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("x")
    elif kind == "symlink to a file":
        (tmp_path / "f").write_text("x")
        out.symlink_to(tmp_path / "f")
    else:
        out.symlink_to(tmp_path / "nothing")
    code, _, err = run(capsys, "evaluate", "--checkpoint", made[2], "--data", made[1],
                       "--out", out, "--quiet")
    line = one_error(code, err)
    assert f"{out} (--out)" in line and "not a folder" in line
    assert "estimate:" not in err  # refused before any image was scored


def _read_only_under(monkeypatch, folder: Path) -> None:
    """Every folder or file created under FOLDER fails as on a read-only mount."""
    real_mkdir, real_create = Path.mkdir, atomic.create_private

    def mkdir(self, *a, **k):
        if self.is_dir() and k.get("exist_ok"):
            return None  # as the kernel does: EEXIST comes first
        if folder == self or folder in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **k)

    def create(path):
        if folder in Path(path).parents:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_create(path)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(atomic, "create_private", create)


@pytest.mark.parametrize("exists", [False, True])
def test_evaluate_out_on_a_read_only_folder_is_one_line(made, tmp_path, capsys, monkeypatch,
                                                        exists):
    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro / "out"
    if exists:
        out.mkdir()
    _read_only_under(monkeypatch, ro)
    code, _, err = run(capsys, "evaluate", "--checkpoint", made[2], "--data", made[1],
                       "--out", out, "--quiet")
    line = one_error(code, err)
    assert f"{out} (--out)" in line and "read-only file system" in line


def _full_disk(monkeypatch) -> None:
    def full(f, raw):
        f.write(raw[: len(raw) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "write_bytes", full)


def test_evaluate_on_a_full_disk_is_one_line(made, tmp_path, capsys, monkeypatch):
    _full_disk(monkeypatch)
    code, _, err = run(capsys, "evaluate", "--checkpoint", made[2], "--data", made[1],
                       "--out", tmp_path / "out", "--quiet")
    line = one_error(code, err)
    assert "(--out)" in line and "no space left" in line


# ----------------------------------------------------------------------------- report


def _run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-3}) + "\n" for s in (1, 2, 3)))
    return run_dir


def test_report_on_a_read_only_folder_is_one_line(tmp_path, capsys, monkeypatch):
    run_dir = _run_dir(tmp_path)
    _read_only_under(monkeypatch, run_dir)
    line = one_error(*run(capsys, "report", run_dir)[::2])
    assert "cannot write the report" in line and "read-only file system" in line
    assert [p.name for p in run_dir.iterdir()] == ["metrics.jsonl"]


def test_report_on_a_full_disk_keeps_the_old_report(tmp_path, capsys, monkeypatch):
    run_dir = _run_dir(tmp_path)
    assert run(capsys, "report", run_dir)[0] == 0
    old = (run_dir / "report.html").read_bytes()
    _full_disk(monkeypatch)
    line = one_error(*run(capsys, "report", run_dir)[::2])
    assert "cannot write the report" in line and "no space left" in line
    assert (run_dir / "report.html").read_bytes() == old
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.jsonl", "report.html"]


def test_report_html_that_is_a_folder_is_one_line(tmp_path, capsys):
    run_dir = _run_dir(tmp_path)
    (run_dir / "report.html").mkdir()
    line = one_error(*run(capsys, "report", run_dir)[::2])
    assert "report.html" in line and "a folder is in the way" in line


def test_report_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path, capsys):
    run_dir = _run_dir(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (run_dir / "report.html").symlink_to(victim)
    assert run(capsys, "report", run_dir)[0] == 0
    assert victim.read_text() == "precious"
    assert not (run_dir / "report.html").is_symlink()
    assert (run_dir / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_report_embeds_no_figure_linked_from_outside_the_run(tmp_path, capsys):
    run_dir = _run_dir(tmp_path)
    outside = tmp_path / "private.png"
    _, buf = cv2.imencode(".png", np.full((8, 8, 3), 200, np.uint8))
    outside.write_bytes(buf.tobytes())
    plots = run_dir / "eval-d-test" / "plots"
    plots.mkdir(parents=True)
    (plots.parent / "metrics.json").write_text(json.dumps({"num_images": 1}))
    (plots / "overlay_a.png").symlink_to(outside)
    shutil.copy(outside, plots / "overlay_b.png")
    assert run(capsys, "report", run_dir)[0] == 0
    page = (run_dir / "report.html").read_text()
    assert "overlay_b.png" in page and "overlay_a.png" not in page


# ----------------------------------------------------------------------------- predict


def _photo(made, folder: Path, name: str | bytes) -> Path:
    folder.mkdir(exist_ok=True)
    tif = next((made[0] / "training" / "images").glob("*.tif"))
    ok, buf = cv2.imencode(".png", cv2.imread(str(tif)))
    assert ok
    path = os.path.join(os.fsencode(folder), name) if isinstance(name, bytes) else folder / name
    with open(path, "wb") as f:
        f.write(buf.tobytes())
    return Path(os.fsdecode(path))


def test_predict_takes_one_image_file_and_logs_full_lines(made, tmp_path, capsys):
    img = _photo(made, tmp_path / "imgs", "eye.png")
    _photo(made, tmp_path / "imgs", "other.png")  # not asked for
    code, out, err = run(capsys, "predict", "--checkpoint", made[2], "--images", img,
                         "--out", tmp_path / "pred")
    assert code == 0, err[-3000:]
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["eye.png", "eye_prob.png"]
    assert "predicted 1 image(s)" in out
    assert "predict: 1/1 img" in err and "\r" not in err


def test_predict_a_file_in_the_out_folder_is_refused_like_its_folder(made, tmp_path, capsys):
    img = _photo(made, tmp_path / "imgs", "eye.png")
    line = one_error(*run(capsys, "predict", "--checkpoint", made[2], "--images", img,
                          "--out", tmp_path / "imgs")[::2])
    assert "--overwrite" in line


def test_predict_out_that_is_a_symlink_to_a_file_is_one_line(made, tmp_path, capsys):
    img = _photo(made, tmp_path / "imgs", "eye.png")
    (tmp_path / "f").write_text("x")
    (tmp_path / "out").symlink_to(tmp_path / "f")
    line = one_error(*run(capsys, "predict", "--checkpoint", made[2], "--images", img,
                          "--out", tmp_path / "out")[::2])
    assert "--out" in line and "not a folder" in line
    assert (tmp_path / "f").read_text() == "x"


def test_predict_on_a_full_disk_is_one_line(made, tmp_path, capsys, monkeypatch):
    img = _photo(made, tmp_path / "imgs", "eye.png")
    _full_disk(monkeypatch)
    line = one_error(*run(capsys, "predict", "--checkpoint", made[2], "--images", img,
                          "--out", tmp_path / "pred", "--quiet")[::2])
    assert "cannot write predictions into" in line and "no space left" in line


def test_a_file_name_that_is_not_utf8_is_a_warning_and_the_others_are_predicted(made,
                                                                               tmp_path):
    src = tmp_path / "imgs"
    _photo(made, src, b"bad\xff.png")
    _photo(made, src, "good.png")
    r = cli_subprocess("predict", "--checkpoint", made[2], "--images", src, "--out",
                       tmp_path / "pred", "--quiet")
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])  # was 139: OpenCV segfaulted
    assert "warning: skipped b'bad\\xff.png'" in r.stderr and "not valid UTF-8" in r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(os.listdir(tmp_path / "pred")) == ["good.png", "good_prob.png"]
    mask = cv2.imread(str(tmp_path / "pred" / "good.png"), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(mask)) <= {0, 255}
