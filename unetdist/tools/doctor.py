"""Environment check: can this machine/process train? Returns report lines and blocking problems."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("torch", "accelerate", "timm", "webdataset", "wandb",
            "opencv-python-headless", "safetensors", "omegaconf", "numpy")
EXPORT_EXTRA = ("onnx", "onnxscript", "onnxruntime")  # `pip install unetdist[export]`
SHM = Path("/dev/shm")
DIST_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DoctorReport:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, key: str, value: object) -> None:
        self.lines.append(f"{key:<24} {value}")


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def _check_torch(r: DoctorReport) -> None:
    try:
        import torch
        import torch.distributed as dist
    except ImportError as e:
        r.problems.append(f"torch cannot be imported: {e}")
        return
    r.add("torch", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})")
    cuda = torch.cuda.is_available()
    r.add("cuda available", cuda)
    for i in range(torch.cuda.device_count() if cuda else 0):
        p = torch.cuda.get_device_properties(i)
        r.add(f"gpu {i}", f"{p.name}, {p.total_memory / 2**30:.1f} GiB")
    if not cuda:
        r.add("mode", "CPU only: training runs on CPU processes over gloo (fine, but slow)")
    r.add("nccl", dist.is_nccl_available() and cuda)
    r.add("gloo", dist.is_gloo_available())
    if not dist.is_gloo_available() and not (cuda and dist.is_nccl_available()):
        r.problems.append("no usable torch.distributed backend (neither gloo nor NCCL)")


def _check_accelerate_config(r: DoctorReport) -> None:
    try:
        from accelerate.commands.config.config_args import default_config_file
    except ImportError:
        r.problems.append("accelerate cannot be imported")
        return
    path = Path(default_config_file)
    r.add("accelerate config", str(path) if path.exists() else "none (defaults apply)")


def _check_env(r: DoctorReport) -> None:
    for k in DIST_ENV:
        if k in os.environ:
            r.add(k, os.environ[k])
    for k in sorted(os.environ):
        if k.startswith("SLURM_") and k in ("SLURM_JOB_ID", "SLURM_NNODES", "SLURM_NODEID",
                                            "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_NODELIST",
                                            "SLURM_RESTART_COUNT", "SLURM_TMPDIR"):
            r.add(k, os.environ[k])


def _check_paths(r: DoctorReport, paths: list[str]) -> None:
    for p in paths:
        if not Path(p).exists():
            r.problems.append(f"path does not exist: {p}")
            continue
        free = shutil.disk_usage(p).free
        r.add(f"free at {p}", f"{free / 2**30:.1f} GiB")


def _check_export_extra(r: DoctorReport) -> None:
    missing = [p for p in EXPORT_EXTRA if _version(p) == "not installed"]
    r.add("export extra", "installed (unetdist export --format onnx)" if not missing else
          f"missing {', '.join(missing)}: pip install 'unetdist[export]' for --format onnx")


def _check_shm(r: DoctorReport, data, processes: int, shm: Path = SHM) -> None:
    if not shm.is_dir():
        r.add("/dev/shm", "absent (DataLoader workers fall back to files)")
        return
    free = shutil.disk_usage(shm).free
    if data is None:
        r.add("/dev/shm free", f"{free / 2**20:.0f} MiB (pass --config to check it against "
              "data.num_workers)")
        return
    # the trainer's own rule; imported here because a doctor must run when torch cannot
    from unetdist.train.setup import shm_need

    need = shm_need(data, processes)
    r.add("/dev/shm free", f"{free / 2**20:.0f} MiB; {processes} process(es) x "
          f"{data.num_workers} worker(s) need about {need / 2**20:.0f} MiB")
    if need > free:
        r.problems.append(
            f"/dev/shm has {free / 2**20:.0f} MiB free but data.num_workers={data.num_workers} "
            f"needs about {need / 2**20:.0f} MiB (workers crash with a bus error): lower "
            "data.num_workers or data.batch_size, or enlarge it (docker run --shm-size=2g)")


def run_doctor(paths: list[str] | tuple = (), data=None, processes: int = 1,
               shm: Path = SHM) -> DoctorReport:
    """`data`: the DataConfig to check /dev/shm against (None: only report its size)."""
    r = DoctorReport()
    r.add("python", f"{sys.version.split()[0]} ({platform.platform()})")
    _check_torch(r)
    for pkg in PACKAGES[1:]:
        r.add(pkg, _version(pkg))
    _check_export_extra(r)
    _check_accelerate_config(r)
    _check_env(r)
    _check_shm(r, data, processes, shm)
    _check_paths(r, list(paths))
    return r
