"""Issue 18.2: a plain (non-editable) `pip install .` runs the demo and the benchmarks from any
directory. No network: a scratch venv sees this venv's packages through a .pth line and gets
unetdist itself with `pip install --no-deps --no-build-isolation` from a copy of the tree."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.util import REPO, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.dist]

TOP_SKIP = {".git", ".venv", "runs", "data", "demo_run", "build", "wandb", ".pytest_cache",
            ".ruff_cache"}  # the checkout's work folders (unetdist/data/ is code: top level only)


def _skip(folder: str, names: list[str]) -> set[str]:
    top = TOP_SKIP if Path(folder) == REPO else set()
    return {n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=_skip)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    purelib = next(venv.glob("lib/python*/site-packages"))
    # this interpreter's packages (torch, accelerate, pip, setuptools...) after the venv's own
    (purelib / "_parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    py = venv / "bin" / "python"
    env = _env()
    r = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", str(src)], capture_output=True, text=True, env=env,
                       cwd=root, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    work = root / "elsewhere"
    work.mkdir()
    return {"py": py, "bin": venv / "bin", "purelib": purelib, "work": work, "env": env}


def _env() -> dict:
    env = subprocess_env()
    env.pop("PYTHONPATH", None)  # the installed copy, not this checkout
    return env


def _run(installed: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(installed["bin"] / "unetdist"), *args], capture_output=True,
                          text=True, env=installed["env"], cwd=installed["work"],
                          timeout=timeout, check=False)


def test_the_installed_copy_is_used(installed):
    r = subprocess.run([installed["py"], "-c", "import unetdist; print(unetdist.__file__)"],
                       capture_output=True, text=True, env=installed["env"],
                       cwd=installed["work"], check=True)
    assert Path(r.stdout.strip()).is_relative_to(installed["purelib"])
    assert not (installed["purelib"] / "unetdist" / "resources" / "configs").is_symlink()
    r = _run(installed, "--version")
    assert r.returncode == 0 and r.stdout.startswith("unetdist ")


def test_demo_runs_from_any_directory(installed):
    # one process: what is checked here is the installed copy's files; test_demo.py runs DDP
    r = _run(installed, "demo", "--steps", "5", "--size", "64x64", "--n-train", "4",
             "--n-test", "2", "--nproc", "1", "--no-progress", "model.width=8", "data.crop=48",
             "data.num_workers=0", "eval.tile=64")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    run = installed["work"] / "demo_run" / "run"
    assert json.loads((run / "eval-test" / "metrics.json").read_text())["num_images"] == 2
    assert (run / "report.html").is_file()


def test_bench_runs_from_any_directory(installed):
    r = _run(installed, "bench", "--quick", "--only", "staging", "--out", "b.json")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    doc = json.loads((installed["work"] / "b.json").read_text())
    assert doc["errors"] == {} and "staging" in doc["sections"]


