"""`unetdist stage SRC DST` from the command line: results, exit codes, concurrency."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.unit.test_stage import assert_complete_copy, make_shard_dir, names
from tests.util import REPO, cli, subprocess_env


def test_help_lists_stage():
    r = cli("--help")
    assert r.returncode == 0 and "stage" in r.stdout


def test_stage_then_noop_then_rehash(tmp_path):
    src, dst = tmp_path / "shared", tmp_path / "local"
    m = make_shard_dir(src)
    r = cli("stage", src, dst, "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["copied"] == names(m) and first["copied_bytes"] == m["total_bytes"]
    assert_complete_copy(src, dst, m)

    r = cli("stage", src, dst, "--quiet", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["copied_bytes"] == 0

    r = cli("stage", src, dst, "--rehash", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "copied 0 shard(s)" in r.stdout and "re-hashed" in r.stdout


def test_progress_bar_goes_to_stderr(tmp_path):
    src = tmp_path / "shared"
    make_shard_dir(src, n=2)
    r = cli("stage", src, tmp_path / "local")
    assert r.returncode == 0, r.stderr
    assert "stage 2 shards" in r.stderr and "B/s" in r.stderr
    assert r.stdout.startswith("staged ")


def test_missing_src_exits_2_with_one_line(tmp_path):
    r = cli("stage", tmp_path / "missing", tmp_path / "local")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "stage source not found" in r.stderr


def test_missing_manifest_exits_2(tmp_path):
    (tmp_path / "shared").mkdir()
    r = cli("stage", tmp_path / "shared", tmp_path / "local")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "manifest.json" in r.stderr


def test_corrupted_source_exits_2_naming_the_shard(tmp_path):
    src = tmp_path / "shared"
    m = make_shard_dir(src)
    victim = names(m)[1]
    data = bytearray((src / victim).read_bytes())
    data[0] ^= 1
    (src / victim).write_bytes(bytes(data))
    r = cli("stage", src, tmp_path / "local", "--quiet")
    assert r.returncode == 2 and victim in r.stderr and "corrupt" in r.stderr
    assert not (tmp_path / "local" / "manifest.json").exists()


def test_bad_threads_exits_2(tmp_path):
    src = tmp_path / "shared"
    make_shard_dir(src, n=1)
    r = cli("stage", src, tmp_path / "local", "--threads", "0")
    assert r.returncode == 2 and "--threads" in r.stderr


@pytest.mark.slow  # two real interpreters racing for the same stage lock
def test_two_cli_processes_stage_once(tmp_path):
    src, dst = tmp_path / "shared", tmp_path / "local"
    m = make_shard_dir(src, n=8, size=2_000_000)
    cmd = [sys.executable, "-m", "unetdist", "stage", str(src), str(dst), "--quiet",
           "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=subprocess_env(), cwd=REPO) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    copied = sorted((json.loads(o)["copied"] for o, _ in outs), key=len)
    assert copied == [[], names(m)]
    assert_complete_copy(src, dst, m)
