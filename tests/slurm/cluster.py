"""A real two-node Slurm cluster on this host, for tests (Debian's slurm-wlm 22.05 + munge).

Two `slurmd -N n1` / `slurmd -N n2` daemons share the host (ports 17001/17002); slurmctld and a
private munged run beside them. Everything lives in one folder (slurm.conf, munge key and socket,
state, spools, logs); clients find the cluster through `SLURM_CONF`. `stop()` ends exactly the
processes `start()` launched (by pid), after cancelling the cluster's jobs and waiting for their
slurmstepd processes to leave, so no daemon outlives the fixture.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "scancel")
NODE_PORTS = {"n1": 17001, "n2": 17002}
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def missing_binaries() -> list[str]:
    search = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [b for b in BINARIES if shutil.which(b, path=search) is None]


def install() -> tuple[bool, str, float]:
    """apt-get install slurm-wlm + munge when missing: (ok, reason, seconds spent)."""
    if not missing_binaries():
        return True, "already installed", 0.0
    if os.geteuid() != 0:
        return False, "slurm-wlm/munge missing and not root (cannot apt-get install)", 0.0
    if shutil.which("apt-get") is None:
        return False, "slurm-wlm/munge missing and no apt-get on this machine", 0.0
    t0 = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            return False, f"{' '.join(cmd)} failed: {' | '.join(tail)}", time.monotonic() - t0
    still = missing_binaries()
    if still:
        return False, f"installed {PACKAGES} but still missing {still}", time.monotonic() - t0
    return True, "installed", time.monotonic() - t0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as slurmd binds (TIME_WAIT ok)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


# cred_expire: a requeued job may not start again before its credential expires (120 s by
# default); 5 is the least slurmctld accepts, and the Slurm tests requeue three jobs.
SLURM_CONF = """\
ClusterName=unetdisttest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=30
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
{nodes}
PartitionName=test Nodes={node_names} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """Start with `start()`, always `stop()`; `env` is the environment for client commands."""

    root: Path
    nodes: dict[str, int] = field(default_factory=lambda: dict(NODE_PORTS))
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict:
        env = dict(os.environ, SLURM_CONF=str(self.conf))
        env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
        return env

    # ------------------------------------------------------------------ set-up

    def write_files(self) -> None:
        for d in ("munge", "state", "run", "log", *(f"spool/{n}" for n in self.nodes)):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        # munged refuses group/world-accessible folders holding its socket and key.
        os.chmod(self.root, 0o755)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        host = socket.gethostname()
        nodes = "\n".join(f"NodeName={n} NodeHostname={host} Port={p} CPUs=1 State=UNKNOWN"
                          for n, p in self.nodes.items())
        self.conf.write_text(SLURM_CONF.format(
            host=host, ctld_port=_free_port(), root=self.root, nodes=nodes,
            node_names=",".join(self.nodes)))

    def _spawn(self, name: str, cmd: list[str]) -> None:
        if shutil.which("setpriv"):  # SIGTERM the daemon if pytest dies without tearing down
            cmd = ["setpriv", "--pdeathsig", "TERM", "--", *cmd]  # execs: same pid
        with open(self.root / "log" / f"{name}.out", "ab") as log:  # the child keeps its copy
            self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=self.env,
                                                start_new_session=True)

    def start(self, timeout: float = 60) -> None:
        busy = [p for p in self.nodes.values() if not _port_free(p)]
        if busy:
            raise RuntimeError(f"slurmd ports already in use: {busy}")
        self.write_files()
        m = self.root / "munge"
        self._spawn("munged", ["munged", "-F", "--force", f"--socket={m}/munge.socket",
                               f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
                               f"--log-file={self.root}/log/munged.log",
                               f"--seed-file={m}/munged.seed"])
        self._wait(lambda: (m / "munge.socket").exists(), timeout, "munged socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self.run("scontrol", "ping").returncode == 0, timeout, "slurmctld")
        for n in self.nodes:
            self._spawn(f"slurmd-{n}", ["slurmd", "-D", "-N", n, "-f", str(self.conf)])
        self._wait(self._all_idle, timeout, "both nodes idle in sinfo")

    def _all_idle(self) -> bool:
        r = self.run("sinfo", "-h", "-N", "-o", "%N %t")
        states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
        return all(states.get(n) == "idle" for n in self.nodes)

    def _wait(self, pred, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited while waiting for {what}:\n{self.logs()}")
            if pred():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout}s waiting for {what}:\n{self.logs()}")

    def logs(self, lines: int = 15) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            tail = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {f.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # ------------------------------------------------------------------ clients

    def job_env(self, **extra: str) -> dict:
        """What a user submits from: the venv active (PYTHON too), this cluster's SLURM_CONF."""
        from tests.util import subprocess_env

        env = subprocess_env(SLURM_CONF=str(self.conf), PYTHON=sys.executable, **extra)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", ""),
                                       "/usr/sbin", "/sbin"])
        return env

    def run(self, *cmd: str, timeout: float = 30, env: dict | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), check=False, capture_output=True, text=True,
                              timeout=timeout, env=env or self.env, cwd=cwd)

    def sbatch(self, *args: str, env: dict | None = None, cwd: str | Path | None = None) -> str:
        r = self.run("sbatch", "--parsable", *args, env=env, cwd=cwd)
        if r.returncode != 0:
            raise RuntimeError(f"sbatch failed: {r.stderr.strip()}")
        return r.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` as a dict (no accounting needed); {} once the job is gone."""
        r = self.run("scontrol", "show", "job", "-o", job_id)
        if r.returncode != 0:
            return {}
        fields = {}
        for tok in r.stdout.split():
            k, sep, v = tok.partition("=")
            if sep:
                fields[k] = v
        return fields

    def wait_job(self, job_id: str, states: set[str] | None = None, timeout: float = 300,
                 pred=None) -> dict[str, str]:
        """Poll until the job reaches one of `states` (default: any terminal state)."""
        states = states or TERMINAL_STATES
        last: dict[str, str] = {}

        def done() -> bool:
            nonlocal last
            last = self.job(job_id)
            if pred is not None:
                return pred(last)
            return last.get("JobState") in states

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return last
            time.sleep(0.25)
        raise TimeoutError(f"job {job_id} still {last.get('JobState')} after {timeout}s "
                           f"(wanted {sorted(states)}):\n{self.logs()}")

    # ------------------------------------------------------------------ tear-down

    def _step_sockets(self) -> list[Path]:
        # slurmstepd's socket is SlurmdSpoolDir/<node>_<job>.<step> while the step lives.
        return [p for n in self.nodes for p in (self.root / "spool" / n).glob(f"{n}_*")]

    def stop(self, timeout: float = 60) -> None:
        """Cancel our jobs, let their slurmstepds leave, then end the daemons we started."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--partition=test")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                r = self.run("squeue", "-h", "-o", "%i")
                if not r.stdout.strip() and not self._step_sockets():
                    break
                time.sleep(0.25)
        order = [n for n in self.procs if n.startswith("slurmd-")] + ["slurmctld", "munged"]
        for name in order:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()
