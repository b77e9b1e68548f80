"""Issue 18.2: what a plain install needs: bounded dependencies, no unused ones, only public
APIs of the bounded libraries, and the shipped resources."""

from __future__ import annotations

import ast
import re

import tomllib

from tests.util import REPO

BOUNDED = ("accelerate", "timm", "webdataset", "wandb")


def _deps() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower(): d for d in project["dependencies"]}


def test_dependencies_are_used_and_bounded():
    deps = _deps()
    assert "torchvision" not in deps  # never imported
    for name in BOUNDED:
        assert "<" in deps[name], f"{deps[name]} has no upper bound"


def test_installed_versions_fit_the_bounds():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    for name in BOUNDED:
        req = Requirement(_deps()[name])
        assert req.specifier.contains(version(name)), (req, version(name))


def _imports(path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_only_public_wandb_and_webdataset_interfaces():
    bad = []
    for path in (REPO / "unetdist").rglob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] in ("wandb", "webdataset") and (
                    "sdk" in parts or any(p.startswith("_") for p in parts)):
                bad.append(f"{path.relative_to(REPO)}: {name}")
    assert bad == []


def test_resources_are_the_repository_files():
    from unetdist.resources import resource

    for rel in ("configs/demo.yaml", "configs/drive_unet.yaml", "launch/train.sh",
                "launch/multi_gpu.yaml"):
        assert resource(*rel.split("/")).read_bytes() == (REPO / rel).read_bytes()


def test_gitignore_covers_the_readme_working_folders():
    import subprocess

    paths = ["data/raw/x.tif", "runs/mine/config.yaml", "demo_run/run/x", "unetdist/data/x.py"]
    r = subprocess.run(["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True,
                       check=False)
    assert r.stdout.split() == paths[:3]  # and the package's own data/ folder is not ignored
