"""A stand-in `python -m unetdist` for testing slurm/train.sbatch's orchestration alone.

The test copies this file to <tmp>/unetdist/__main__.py and puts <tmp> first on PYTHONPATH, so
the sbatch script's `unetdist stage|train|evaluate` land here. `train` is a real gloo job:
every step all-reduces a number across all ranks of all nodes; on SIGUSR1 the ranks agree at a
step boundary, save the step, rank 0 writes PREEMPTED and all exit 0 (the real trainer's
protocol). Everything observable goes into files the test reads.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path


def _overrides(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args if "=" in a)


def stage(src: str, dst: str) -> int:
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(src) / "manifest.json", out / "manifest.json")
    (out / "staged-by").write_text(os.environ.get("SLURMD_NODENAME", "?"))
    return 0


class _Single:
    """torch.distributed's calls for a run started without a launcher (one process)."""

    def get_rank(self) -> int:
        return 0

    def get_world_size(self) -> int:
        return 1

    def all_reduce(self, *a, **k) -> None:
        pass

    def all_gather_object(self, out: list, obj) -> None:
        out[0] = obj

    barrier = destroy_process_group = all_reduce


def train(args: list[str]) -> int:
    import torch
    import torch.distributed

    flag = []
    signal.signal(signal.SIGUSR1, lambda *_: flag.append(1))
    ov = _overrides(args)
    run = Path(ov["train.run_dir"])
    max_steps, pause = int(ov["train.max_steps"]), float(ov.get("fake.pause", "0.2"))
    dist = torch.distributed if "WORLD_SIZE" in os.environ else _Single()
    if dist is torch.distributed:
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    run.mkdir(parents=True, exist_ok=True)
    state = run / "state.json"
    start, total = (json.loads(state.read_text()).values() if state.exists() else (0, 0.0))
    for step in range(start, max_steps):
        t = torch.tensor([float(rank + 1) * (step + 1), float(bool(flag))])
        dist.all_reduce(t[:1])
        dist.all_reduce(t[1:], op=torch.distributed.ReduceOp.MAX)  # all stop at the same step
        total += t[0].item()
        if rank == 0:
            (run / "progress").write_text(str(step + 1))
        if t[1].item() > 0:
            if rank == 0:
                state.write_text(json.dumps({"step": step + 1, "total": total}))
                (run / "PREEMPTED").write_text(str(step + 1))
            dist.barrier()
            dist.destroy_process_group()
            return 0
        time.sleep(pause)
    info = {"rank": rank, "world": world, "node": os.environ.get("SLURMD_NODENAME"),
            "node_id": int(os.environ["SLURM_NODEID"]), "host": socket.gethostname(),
            "local_dir": ov["data.local_dir"], "stage": ov["data.stage"],
            "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
            "launcher": "WORLD_SIZE" in os.environ,
            "extra": ov.get("fake.extra"), "total": total, "steps": max_steps}
    gathered: list = [None] * world
    dist.all_gather_object(gathered, info)
    if rank == 0:
        (run / "best").mkdir(exist_ok=True)
        (run / "result.json").write_text(json.dumps(gathered))
    dist.barrier()
    dist.destroy_process_group()
    return 0


def evaluate(args: list[str]) -> int:
    opts = dict(zip(args[::2], args[1::2]))
    out = Path(opts["--checkpoint"]).parent / f"eval-{opts['--split']}"
    out.mkdir(exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"data": opts["--data"],
                                                  "node": os.environ.get("SLURMD_NODENAME")}))
    return 0


def main() -> int:
    cmd, rest = sys.argv[1], [a for a in sys.argv[2:] if a not in ("--quiet", "--no-progress")]
    if cmd == "stage":
        return stage(*rest)
    if cmd == "train":
        return train(rest)
    if cmd == "evaluate":
        return evaluate(rest)
    raise SystemExit(f"fake unetdist: unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main())
