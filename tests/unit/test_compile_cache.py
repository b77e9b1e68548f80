"""torch.compile's kernel cache after a killed compile: broken `.so` files are removed and the
compile retried, or one error line names the folder and the fix."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from unetdist.errors import UserError
from unetdist.train import compile_cache as cc


def _real_so() -> Path:
    import torch

    return next(Path(torch.__file__).parent.glob("lib/*.so"))


def _age(path: Path, seconds: float = 3600) -> Path:
    t = time.time() - seconds
    os.utime(path, (t, t))
    return path


def _plant(root: Path) -> dict[str, Path]:
    """A complete kernel, a 0-byte one and a truncated one, as a killed compile leaves them."""
    real = _real_so().read_bytes()
    files = {"good": root / "ab" / "good.so", "empty": root / "cd" / "empty.so",
             "short": root / "ef" / "short.so", "fresh": root / "gh" / "fresh.so"}
    for name, path in files.items():
        path.parent.mkdir(parents=True)
        path.write_bytes({"good": real, "empty": b"", "short": real[: len(real) // 2],
                          "fresh": b""}[name])
        if name != "fresh":
            _age(path)
    return files


def test_the_scan_finds_empty_and_truncated_kernels_only(tmp_path):
    files = _plant(tmp_path)
    assert cc.is_complete_elf(files["good"]) and not cc.is_complete_elf(files["short"])
    # a file just written may be a concurrent compile's output: spared until a load fails
    assert cc.bad_entries(tmp_path) == [files["empty"], files["short"]]
    assert cc.bad_entries(tmp_path, min_age_s=0) == [files["empty"], files["short"],
                                                     files["fresh"]]


def test_repair_removes_the_bad_entries_and_says_so_once(tmp_path, capsys):
    files = _plant(tmp_path)
    assert cc.repair(tmp_path) == [files["empty"], files["short"]]
    assert files["good"].is_file() and files["fresh"].is_file()
    assert not files["empty"].exists() and not files["short"].exists()
    err = capsys.readouterr().err
    assert err == (f"warning: removed 2 truncated compiled kernel(s) from torch's compile cache "
                   f"{tmp_path} (left by a killed compile); they are rebuilt\n")
    assert cc.repair(tmp_path) == [] and capsys.readouterr().err == ""


def test_the_cache_folder_follows_torchinductor_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert cc.cache_dir() == tmp_path


def _failing_once(message: str):
    calls = []

    def forward(x):
        calls.append(x)
        if len(calls) == 1:
            raise RuntimeError("wrapper") from OSError(message)
        return x * 2

    return forward, calls


def test_a_load_failure_repairs_and_retries_once(tmp_path, capsys):
    files = _plant(tmp_path)
    forward, calls = _failing_once(f"{files['fresh']}: file too short")
    assert cc._guarded(forward, tmp_path)(3) == 6 and calls == [3, 3]
    assert not files["fresh"].exists()  # after a failed load, a fresh file is fair game
    assert "removed 3 truncated compiled kernel(s)" in capsys.readouterr().err


def test_a_load_failure_without_bad_entries_is_one_error_line(tmp_path):
    forward, _ = _failing_once("invalid ELF header")
    with pytest.raises(UserError) as e:
        cc._guarded(forward, tmp_path)(1)
    assert str(e.value) == (f"torch.compile cannot load a kernel from its cache {tmp_path}: "
                            f"remove that folder (rm -rf {tmp_path}) and run again, or run with "
                            "model.compile=false")
    assert "\n" not in str(e.value)


def test_other_errors_pass_through(tmp_path):
    forward, _ = _failing_once("shapes do not match")
    with pytest.raises(RuntimeError, match="wrapper"):
        cc._guarded(forward, tmp_path)(1)


def test_the_call_site_repairs_before_the_first_compile(tmp_path, monkeypatch):
    """with_cache_repair on the trainer's compiled module: bad entries go before any load."""
    import torch

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    files = _plant(tmp_path)
    net = torch.nn.Linear(3, 2)
    assert cc.with_cache_repair(net) is net and files["empty"].exists()  # not compiled
    model = cc.with_cache_repair(torch.compile(net, backend="eager"))
    assert not files["empty"].exists() and not files["short"].exists()
    torch.testing.assert_close(model(torch.ones(1, 3)), net(torch.ones(1, 3)))


COMPILE = textwrap.dedent("""
    import sys, torch
    from unetdist.train.compile_cache import with_cache_repair
    # one fused pointwise kernel: what is tested is the cache, not the size of the graph (a
    # conv net with its backward cost ~6 s more per compile, and the test compiles twice)
    net = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Hardtanh(0.0, 0.5))
    model = torch.compile(net, backend="inductor")
    if sys.argv[1] == "repair":
        model = with_cache_repair(model)
    out = model(torch.linspace(-1, 1, 256))
    print("ok", float(out.sum()))
""")


@pytest.mark.slow
def test_a_real_compile_recovers_from_a_planted_empty_kernel(tmp_path):
    """Compile once, empty every kernel as a killed compile leaves it: plain torch.compile then
    fails with "file too short", ours removes them and compiles again to the same output."""
    # no vector-ISA probe: it builds six test .so files of its own on a cold cache (23 s per
    # compile here instead of 12 s); the one kernel left is cached and loaded the same way
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_VEC_ISA_OK": "0"}

    def run(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", COMPILE, mode], env=env, text=True,
                              check=False, capture_output=True, timeout=900)

    first = run("plain")
    assert first.returncode == 0, first.stderr[-3000:]
    kernels = sorted((tmp_path / "cache").rglob("*.so"))
    assert kernels
    for so in kernels:
        so.write_bytes(b"")
        _age(so)
    broken = run("plain")
    assert broken.returncode != 0 and "file too short" in broken.stderr
    fixed = run("repair")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert fixed.stdout.split() == first.stdout.split()
    assert f"warning: removed {len(kernels)} truncated compiled kernel(s)" in fixed.stderr
    assert all(cc.is_complete_elf(so) for so in kernels if so.exists())
