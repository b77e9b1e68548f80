"""Staging: verified copies, markers, crash safety, locking, waiting ranks, space checks."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.util import REPO, subprocess_env, wait_for
from unetdist.config import DataConfig
from unetdist.data.stage import copy as stage_io
from unetdist.data.stage.node import resolve_data_dir, stage
from unetdist.errors import ConfigError, DataError


def make_shard_dir(root: Path, n: int = 5, size: int = 200_000, seed: int = 0,
                   prefix: str = "train") -> dict:
    """A shard folder of random-byte 'tars' with a correct manifest (sha256, bytes)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        data = rng.randbytes(size + i * 1013)
        name = f"{prefix}-{i:06d}.tar"
        (root / name).write_bytes(data)
        entries.append({"name": name, "bytes": len(data), "samples": 1,
                        "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"format": 1, "layout": "seed", "source": str(root),
                "splits": {"train": {"samples": n, "shards": entries}},
                "total_bytes": sum(e["bytes"] for e in entries)}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def names(manifest: dict) -> list[str]:
    return [s["name"] for s in manifest["splits"]["train"]["shards"]]


def assert_complete_copy(src: Path, dst: Path, manifest: dict) -> None:
    """DST holds the manifest and byte-identical shards whose sha256 matches the manifest."""
    assert (dst / "manifest.json").read_bytes() == (src / "manifest.json").read_bytes()
    for s in manifest["splits"]["train"]["shards"]:
        data = (dst / s["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"]
    assert not any(stage_io.tmp_dir(dst).iterdir())


@pytest.fixture
def ds(tmp_path):
    src, dst = tmp_path / "shared", tmp_path / "local"
    return src, dst, make_shard_dir(src)


def test_stage_copies_everything_verified(ds):
    src, dst, m = ds
    r = stage(src, dst, progress=False)
    assert r.copied == names(m) and r.skipped == []
    assert r.copied_bytes == m["total_bytes"]
    assert_complete_copy(src, dst, m)


def test_second_stage_copies_nothing(ds, monkeypatch):
    src, dst, m = ds
    stage(src, dst, progress=False)
    mtimes = {n: (dst / n).stat().st_mtime_ns for n in names(m)}

    def no_copy(*a, **k):
        raise AssertionError("second stage must not copy")
    monkeypatch.setattr("unetdist.data.stage.node.copy_verified", no_copy)
    r = stage(src, dst, progress=False)
    assert r.copied_bytes == 0 and r.copied == [] and r.skipped == names(m)
    assert r.hashed_bytes == 0
    assert {n: (dst / n).stat().st_mtime_ns for n in names(m)} == mtimes


def test_truncated_local_shard_is_recopied(ds):
    src, dst, m = ds
    stage(src, dst, progress=False)
    victim = names(m)[2]
    with open(dst / victim, "r+b") as f:
        f.truncate(1000)
    r = stage(src, dst, progress=False)
    assert r.copied == [victim]
    assert_complete_copy(src, dst, m)


def test_byte_flip_with_same_size_and_mtime_needs_rehash(ds):
    src, dst, m = ds
    stage(src, dst, progress=False)
    victim = dst / names(m)[1]
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[12345] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert stage(src, dst, progress=False).copied == []  # the marker trusts size + mtime
    r = stage(src, dst, rehash=True, progress=False)
    assert r.copied == [victim.name] and r.hashed_bytes == m["total_bytes"]
    assert_complete_copy(src, dst, m)


def test_local_copy_without_markers_is_hashed_not_copied(ds):
    src, dst, m = ds
    stage(src, dst, progress=False)
    for p in stage_io.marker_dir(dst).iterdir():
        p.unlink()
    r = stage(src, dst, progress=False)
    assert r.copied == [] and r.hashed_bytes == m["total_bytes"]
    assert all(stage_io.marker_file(dst, n).exists() for n in names(m))


def test_exception_mid_copy_leaves_no_partial_files(ds, monkeypatch):
    src, dst, m = ds
    victim = names(m)[3]
    part = stage_io.tmp_dir(dst) / f"{victim}.part"
    real = stage_io._stream
    monkeypatch.setattr(stage_io, "CHUNK", 4096)

    def flaky(path, out, limit, on_bytes, stop):
        if path.name != victim:
            return real(path, out, limit, on_bytes, stop)
        chunks = []

        def boom(n):  # the third chunk of the victim is written, then the copy dies
            chunks.append(n)
            if len(chunks) == 3:
                assert part.stat().st_size == 3 * 4096  # really mid-copy
                raise RuntimeError("injected failure")
            on_bytes(n)
        return real(path, out, limit, boom, stop)

    monkeypatch.setattr(stage_io, "_stream", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        stage(src, dst, threads=2, progress=False)
    assert not (dst / victim).exists()
    assert not (dst / "manifest.json").exists()
    assert list(stage_io.tmp_dir(dst).iterdir()) == []
    assert not [p for p in dst.rglob("*") if ".tmp-" in p.name or p.suffix == ".part"]
    for n in names(m):  # whatever was finished is verified, never half-written
        if (dst / n).exists():
            assert hashlib.sha256((dst / n).read_bytes()).hexdigest() == \
                m["splits"]["train"]["shards"][names(m).index(n)]["sha256"]

    monkeypatch.setattr(stage_io, "_stream", real)
    r = stage(src, dst, progress=False)
    assert victim in r.copied
    assert_complete_copy(src, dst, m)


def test_disk_error_mid_copy_is_one_clear_error(ds, monkeypatch):
    src, dst, _ = ds

    def full(out, view):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(stage_io, "_write_all", full)
    with pytest.raises(DataError, match="into .*local failed: .*No space left on device"):
        stage(src, dst, progress=False)
    assert list(stage_io.tmp_dir(dst).iterdir()) == []
    assert not (dst / "manifest.json").exists()


def test_leftover_temp_files_are_removed(ds):
    src, dst, m = ds
    stage(src, dst, progress=False)
    (stage_io.tmp_dir(dst) / f"{names(m)[0]}.part").write_bytes(b"left by a crash")
    (dst / ".manifest.json.tmp-123-456").write_bytes(b"{")
    stage(src, dst, progress=False)
    assert list(stage_io.tmp_dir(dst).iterdir()) == []
    assert not (dst / ".manifest.json.tmp-123-456").exists()
    assert_complete_copy(src, dst, m)


def test_corrupted_source_shard_fails_with_its_name(ds):
    src, dst, m = ds
    victim = names(m)[4]
    data = bytearray((src / victim).read_bytes())
    data[-1] ^= 1
    (src / victim).write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{victim} is corrupt"):
        stage(src, dst, progress=False)
    assert not (dst / victim).exists() and not (dst / "manifest.json").exists()
    assert list(stage_io.tmp_dir(dst).iterdir()) == []


def test_missing_source_shard_fails_with_its_name(ds):
    src, dst, m = ds
    (src / names(m)[0]).unlink()
    with pytest.raises(DataError, match=names(m)[0]):
        stage(src, dst, progress=False)


def test_missing_src_or_manifest(tmp_path):
    with pytest.raises(DataError, match="not found"):
        stage(tmp_path / "nope", tmp_path / "dst", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="manifest.json"):
        stage(tmp_path / "empty", tmp_path / "dst", progress=False)


def test_unsafe_shard_name_is_refused(ds):
    src, dst, m = ds
    m["splits"]["train"]["shards"][0]["name"] = "../escape.tar"
    (src / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="shard name"):
        stage(src, dst, progress=False)


def test_not_enough_space(ds, monkeypatch):
    src, dst, m = ds
    import shutil
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: real(p)._replace(free=m["total_bytes"] // 2))
    with pytest.raises(DataError, match=r"needs .*\({} bytes\).*available".format(
            m["total_bytes"])):
        stage(src, dst, progress=False)
    assert not any((dst / n).exists() for n in names(m))


def test_restage_of_another_dataset_never_looks_complete(tmp_path, monkeypatch):
    src_a, src_b, dst = tmp_path / "a", tmp_path / "b", tmp_path / "local"
    make_shard_dir(src_a, n=4, seed=1)
    mb = make_shard_dir(src_b, n=2, seed=2)  # same names as a's first two, other bytes
    stage(src_a, dst, progress=False)

    def crash(*a, **k):
        raise RuntimeError("crash mid-restage")
    # b's shards have a's names and sizes, so the first thing the restage does is re-hash the
    # local files: crash right there, before any shard changes
    monkeypatch.setattr("unetdist.data.stage.node.hash_file", crash)
    with pytest.raises(RuntimeError):
        stage(src_b, dst, progress=False)
    assert not (dst / "manifest.json").exists()  # neither a's (stale) nor b's (incomplete)
    monkeypatch.undo()
    r = stage(src_b, dst, progress=False)
    assert r.copied == names(mb)
    assert_complete_copy(src_b, dst, mb)
    assert sorted(p.name for p in dst.glob("*.tar")) == names(mb)  # a's extra shards are gone


def _stage_child(src, dst, barrier, queue):
    barrier.wait()
    r = stage(src, dst, progress=False, lock_timeout=120)
    queue.put(r.copied)


def test_two_processes_stage_once(tmp_path):
    src, dst = tmp_path / "shared", tmp_path / "local"
    m = make_shard_dir(src, n=8, size=2_000_000)
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_stage_child, args=(str(src), str(dst), barrier, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(results, key=len) == [[], names(m)]  # one copied everything, one nothing
    assert_complete_copy(src, dst, m)


# ----------------------------------------------------------------------------- resolve_data_dir


def test_resolve_requires_shared_dir():
    with pytest.raises(ConfigError, match="data.shared_dir"):
        resolve_data_dir(DataConfig())


def test_resolve_without_local_dir_reads_shared(ds, tmp_path):
    src, _, _ = ds
    assert resolve_data_dir(DataConfig(shared_dir=str(src))) == str(src)
    with pytest.raises(DataError, match="manifest.json"):
        resolve_data_dir(DataConfig(shared_dir=str(tmp_path)))


def test_resolve_stage_false_reads_local_as_is(ds):
    src, dst, m = ds
    cfg = DataConfig(shared_dir=str(src), local_dir=str(dst), stage=False)
    with pytest.raises(DataError, match="no complete copy"):
        resolve_data_dir(cfg)
    stage(src, dst, progress=False)
    assert resolve_data_dir(cfg) == str(dst)
    (dst / names(m)[0]).unlink()
    with pytest.raises(DataError, match=names(m)[0]):
        resolve_data_dir(cfg)


def test_resolve_local_rank0_stages(ds, monkeypatch):
    src, dst, m = ds
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_data_dir(DataConfig(shared_dir=str(src), local_dir=str(dst))) == str(dst)
    assert_complete_copy(src, dst, m)


def _waiting_rank(src: Path, dst: Path, timeout: float = 120) -> subprocess.Popen:
    code = ("import sys\nfrom unetdist.config import DataConfig\n"
            "from unetdist.data.stage.node import resolve_data_dir\nfrom unetdist.errors import "
            "UserError\ntry:\n    print(resolve_data_dir(DataConfig(shared_dir=sys.argv[1], "
            "local_dir=sys.argv[2], stage_timeout=float(sys.argv[3]))))\nexcept UserError as e:"
            "\n    print(e, file=sys.stderr)\n    sys.exit(2)\n")
    return subprocess.Popen([sys.executable, "-c", code, str(src), str(dst), str(timeout)],
                            env=subprocess_env(LOCAL_RANK="1"), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_waiting_rank_returns_after_rank0_stages(ds):
    src, dst, _ = ds
    proc = _waiting_rank(src, dst)
    # it polls under DST's lock, so the lock file shows it is waiting before anything is staged
    wait_for(lambda: stage_io.lock_path(dst).exists() or proc.poll() is not None, timeout=60,
             what="the waiting rank to start polling")
    assert proc.poll() is None, proc.communicate()
    stage(src, dst, progress=False)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == str(dst)


def test_waiting_rank_fails_when_rank0_fails(ds):
    src, dst, m = ds
    victim = names(m)[0]
    (src / victim).write_bytes(b"corrupt")
    proc = _waiting_rank(src, dst)
    wait_for(lambda: stage_io.lock_path(dst).exists() or proc.poll() is not None, timeout=60,
             what="the waiting rank to start polling")
    with pytest.raises(DataError):
        stage(src, dst, progress=False)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "local rank 0 failed" in err and victim in err


def test_waiting_rank_times_out_naming_local_rank_0(ds, monkeypatch):
    src, dst, _ = ds
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = DataConfig(shared_dir=str(src), local_dir=str(dst), stage_timeout=0.5)
    with pytest.raises(DataError, match="timed out after 0.5s waiting for local rank 0"):
        resolve_data_dir(cfg)
