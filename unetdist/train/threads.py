"""CPU thread policy: torch's intra-op threads from what the process's cores are really busy with.

torch defaults to one thread per core it can see, in every process; with several training
processes on a node the threads then fight for the cores (on a loaded 2-core box a single
process ran 10x slower with the default than with one thread). So each process gets its share
of the usable cores (usable // local processes; usable = the affinity mask capped by the cgroup
quota, not `os.cpu_count()`), and then gives back what the rest of the machine really uses:

1. At start torch takes the whole share (`choose_threads`).
2. Over the first steps (`ThreadTuner`: from step WINDOW_START, at least WINDOW_STEPS steps and
   WINDOW_SECONDS) it measures the CPU its helper processes (DataLoader workers, and any other
   child) use, and, where it can tell them apart, what other programs use on its cores.
3. It keeps a core away from torch for each started core of that load beyond SPARE
   (`tuned_threads`), at least one thread, and prints the choice with the measured loads.

Why measured and not "cores - loader workers" (the policy before issue 23): with cached data a
worker only crops and augments, below 1% of a core at the CPU recipe's pace, so subtracting it
left half of a 2-core box idle. But a busy core does cost torch dearly: OpenMP's threads wait
for the slowest of them at every op, so a thread that shares its core with another process's
work slows all of them (on a 2-core box loaded by other jobs, 1 thread + 1 worker trained
3.2-7.7x faster than 2 threads + 1 worker, docs/RESULTS.md). SPARE = 0.4: two threads that each
keep >= 60% of a core still beat one thread with a whole core at torch's ~1.8x two-thread
scaling (2 x 0.6 x 0.9 > 1). `unetdist bench --only threads` measures both policies.

Fixed, never re-chosen: OMP_NUM_THREADS set (by the user, or by `accelerate launch`, which sets
it for its workers) and GPU runs (one thread per rank: the GPU does the work). The re-choice
happens on every start, so a resumed run is bitwise identical to an uninterrupted one only when
it ran every step with the same thread count: pin it with OMP_NUM_THREADS for that.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from unetdist.runfolder import STATE_FILE

CGROUP = Path("/sys/fs/cgroup")
SPARE = 0.4  # cores of other load a torch thread can share its core with and still pay off
WINDOW_START, WINDOW_STEPS, WINDOW_SECONDS = 5, 10, 5.0  # after the workers' start and cache


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


def affinity() -> list[int] | None:
    """The CPU numbers this process may run on (None where the OS does not say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return None


def usable_cpus(root: Path = CGROUP) -> int:
    """Cores this process may run on: the affinity mask, capped by the cgroup quota."""
    cpus = affinity()
    n = len(cpus) if cpus is not None else os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return max(1, n)


@dataclass(frozen=True)
class ThreadChoice:
    """The start-up choice; `share` is None when it is fixed (never re-chosen)."""

    threads: int
    why: str
    share: int | None = None  # cores this process may use
    see_others: bool = False  # other programs' load on our cores can be measured (see below)


def _local_processes(env: Mapping[str, str]) -> int:
    local = env.get("LOCAL_WORLD_SIZE", "1")
    return int(local) if local.isdigit() and int(local) > 0 else 1


def choose_threads(cuda: bool, workers: int = 0, env: Mapping[str, str] = os.environ,
                   usable: int | None = None, cpus: int | None = None) -> ThreadChoice:
    """Start-up threads for a process with `workers` loader workers (`cpus`: affinity size)."""
    omp = env.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return ThreadChoice(int(omp), "OMP_NUM_THREADS")
    if cuda:
        return ThreadChoice(1, "GPU run: one per rank")
    local = _local_processes(env)
    usable = usable_cpus() if usable is None else usable
    cpus = len(affinity() or []) if cpus is None else cpus
    share = max(1, usable // local)
    # the busy time of our cores minus ours is other programs' only when no sibling rank runs
    # there and no quota makes our share smaller than those cores
    see_others = local == 1 and cpus == usable
    what = f"the {workers} loader worker(s)" if workers else "helper processes"
    return ThreadChoice(share, f"{usable} usable CPU(s) / {local} process(es); re-chosen after "
                        f"~{WINDOW_START + WINDOW_STEPS} steps from the CPU {what}"
                        + (" and other programs" if see_others else "") + " really use",
                        share, see_others)


def tuned_threads(share: int, helpers: float, others: float | None) -> tuple[int, str]:
    """(threads, why) once the helpers' and other programs' loads (in cores) are measured."""
    load = helpers + (others or 0.0)
    keep = max(0, math.ceil(load - SPARE))
    n = max(1, share - keep)
    seen = f"loader workers (child processes) used {helpers:.2f} core(s)" + (
        "" if others is None else f", other programs {others:.2f}")
    verdict = f"torch keeps all {share}" if n == share else f"torch keeps {n} of {share}"
    return n, f"{seen}: {verdict} (a core is kept only past {SPARE} of one)"


# ----------------------------------------------------------------------------- measuring


@dataclass
class CpuSample:
    """CPU seconds so far: this process, each descendant, and our cores' busy time."""

    wall: float
    own: float
    helpers: dict[int, float] = field(default_factory=dict)
    node: float | None = None


def _busy(t) -> float:
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


def sample_cpu(cpus: Sequence[int] | None) -> CpuSample:
    """Now; the busy time of CPUS (by number) only when given. Descendants: loader workers
    whichever way they were started (forked, spawned, or through a forkserver)."""
    import psutil  # accelerate's own dependency

    me = psutil.Process()
    t = me.cpu_times()
    helpers = {}
    for child in me.children(recursive=True):
        try:
            c = child.cpu_times()
        except psutil.Error:  # exited meanwhile
            continue
        helpers[child.pid] = c.user + c.system
    node = None
    if cpus is not None:
        per = psutil.cpu_times(percpu=True)
        node = sum(_busy(per[i]) for i in cpus if i < len(per))
    return CpuSample(time.monotonic(), t.user + t.system, helpers, node)


def loads_between(a: CpuSample, b: CpuSample) -> tuple[float, float | None]:
    """(helpers, other programs) in cores from A to B; helpers that exited meanwhile drop out,
    new ones count from zero."""
    wall = max(b.wall - a.wall, 1e-9)
    helpers = sum(max(0.0, s - a.helpers.get(pid, 0.0)) for pid, s in b.helpers.items()) / wall
    if a.node is None or b.node is None:
        return helpers, None
    others = (b.node - a.node) / wall - (b.own - a.own) / wall - helpers
    return helpers, max(0.0, others)


class ThreadTuner:
    """Called before every step; measures over the window, then sets the threads once."""

    def __init__(self, choice: ThreadChoice, cpus: Sequence[int] | None = None,
                 report: Callable[[str], None] = print, start: int = WINDOW_START,
                 steps: int = WINDOW_STEPS, seconds: float = WINDOW_SECONDS) -> None:
        self.choice, self.report = choice, report
        self.cpus = cpus if choice.see_others else None
        self.start, self.steps, self.seconds = start, steps, seconds
        self.threads, self.done = choice.threads, choice.share is None
        self.loads: tuple[float, float | None] | None = None
        self._calls, self._first = 0, None

    def __call__(self) -> None:
        if self.done:
            return
        self._calls += 1
        if self._calls == self.start:
            self._first = sample_cpu(self.cpus)
        elif (self._first is not None and self._calls >= self.start + self.steps
              and time.monotonic() - self._first.wall >= self.seconds):
            self.decide(loads_between(self._first, sample_cpu(self.cpus)))

    def decide(self, loads: tuple[float, float | None]) -> None:
        import torch

        self.loads, self.done = loads, True
        self.threads, why = tuned_threads(self.choice.share or 1, *loads)
        torch.set_num_threads(self.threads)
        self.report(f"torch threads per process: {self.threads} ({why})")

    # a checkpoint part (trainer_state.json "threads"): CPU kernels split their reductions by
    # thread, so a resumed run must compute with the count the run settled on to stay bitwise
    name, file = "threads", STATE_FILE

    def state_dict(self) -> dict:
        return {"threads": self.threads, "settled": self.done}

    def load_state_dict(self, state: dict) -> None:
        n = state.get("threads")
        if self.choice.share is None or state.get("settled") is not True or type(n) is not int:
            return  # fixed (OMP_NUM_THREADS, GPU), or saved before settling: measure again
        import torch

        self.threads, self.done = max(1, min(n, self.choice.share)), True
        torch.set_num_threads(self.threads)
        self.report(f"torch threads per process: {self.threads} (the count the run settled on "
                    "before this resume, so that it continues bitwise)")

    def chain(self, hook: Callable[[], None]) -> Callable[[], None]:
        """HOOK (the loop's `before_step`), then this tuner."""
        if self.done:
            return hook

        def both() -> None:
            hook()
            self()
        return both


def apply_thread_policy(cuda: bool, workers: int,
                        report: Callable[[str], None] = print) -> tuple[str, ThreadTuner]:
    """Set torch's start-up threads; return the line to print and the tuner for the loop."""
    import torch

    choice = choose_threads(cuda, workers)
    torch.set_num_threads(choice.threads)
    line = f"torch threads per process: {choice.threads} ({choice.why})"
    return line, ThreadTuner(choice, affinity(), report)
