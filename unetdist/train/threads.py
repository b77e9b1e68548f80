"""CPU thread policy: torch's intra-op threads so that the node's processes fit its cores.

torch defaults to one thread per core it can see, in every process; with several training
processes on a node, DataLoader workers and other jobs, the threads then fight for the cores
(on a loaded 2-core box a single process ran 10x slower with the default than with one thread).
Unless OMP_NUM_THREADS is set (by the user, or by `accelerate launch`, which sets it for its
workers), each process takes (usable cores // local processes) - its loader workers threads, at
least one; the usable cores come from the affinity mask and the cgroup quota, not
`os.cpu_count()`. GPU runs keep one thread per rank: the GPU does the work.

Subtracting the loader workers is measured, not guessed (`unetdist bench --only threads`, see
docs/RESULTS.md): on the shared 2-core box one thread + one worker trained 3.2-7.7x faster
than two threads + one worker; OpenMP's threads wait for the slowest of them at every op, and a
worker that takes a core makes one of them the slowest.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """CPUs the cgroup quota allows (v2 cpu.max or v1 cfs quota/period), None without a quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # v2: "max 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for d in (root / "cpu", root / "cpu,cpuacct"):  # v1
        try:
            quota_us = int((d / "cpu.cfs_quota_us").read_text())
            period_us = int((d / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def usable_cpus(root: Path = CGROUP) -> int:
    """Cores this process may run on: the affinity mask, capped by the cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def choose_threads(cuda: bool, workers: int = 0, env: Mapping[str, str] = os.environ,
                   usable: int | None = None) -> tuple[int, str]:
    """(intra-op threads per process, why) for a process with `workers` loader workers."""
    omp = env.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    if cuda:
        return 1, "GPU run: one per rank"
    local = env.get("LOCAL_WORLD_SIZE", "1")
    local_procs = int(local) if local.isdigit() and int(local) > 0 else 1
    usable = usable_cpus() if usable is None else usable
    n = max(1, usable // local_procs - workers)
    return n, (f"{usable} usable CPU(s) / {local_procs} process(es) - {workers} loader "
               "worker(s)")


def apply_thread_policy(cuda: bool, workers: int) -> str:
    """Set torch's intra-op threads per `choose_threads`; return the line to print."""
    import torch

    n, why = choose_threads(cuda, workers)
    torch.set_num_threads(n)
    return f"torch threads per process: {n} ({why})"
