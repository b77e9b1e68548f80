"""What makes a run self-describing: package versions, git hash, world size, host.

`write_run_config` writes `run_dir/config.yaml`: the resolved config as YAML (loadable again
with `unetdist.config.load_config`) under a comment header holding this run information, and the
same information as `run_dir/runinfo.json` for programs.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

from unetdist.atomic import write_atomic

PACKAGES = ("unetdist", "torch", "accelerate", "timm", "webdataset", "numpy",
            "opencv-python-headless", "safetensors", "omegaconf", "wandb")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_hash(path: str | Path | None = None) -> str | None:
    """Commit of the source tree the package runs from ('+dirty' when modified), or None."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                              text=True, timeout=10, check=False)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=where, capture_output=True, text=True, timeout=10,
                               check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run_info(world_size: int, precision: str) -> dict:
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "world_size": world_size,
        "precision": precision,
        "git": git_hash(),
        "versions": package_versions(),
        "argv": sys.argv,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def write_run_config(run_dir: str | Path, cfg_yaml: str, info: dict) -> Path:
    """Write config.yaml (comment header + resolved config) and runinfo.json atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    header = ["# unetdist resolved config", f"# started {info['started']} on {info['host']}",
              (f"# git {info['git'] or 'unknown'}; world size {info['world_size']}; "
               f"precision {info['precision']}"),
              "# versions " + ", ".join(f"{k} {v}" for k, v in info["versions"].items())]
    for name, text in (("config.yaml", "\n".join(header) + "\n" + cfg_yaml),
                       ("runinfo.json", json.dumps(info, indent=2) + "\n")):
        write_atomic(run_dir / name, text)
    return run_dir / "config.yaml"
