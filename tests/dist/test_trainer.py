"""The trainer under real 2-process DDP over gloo (`accelerate launch --multi_gpu`, CPU).

One uninterrupted reference run is shared by the tests; interrupted runs (kill -9 of the whole
process group, SIGUSR1 preemption) resume and must end bitwise equal to it. Runs stop at known
points through the test-only UNETDIST_FAULT hook (`stall:step=N` waits before step N until a
signal arrives, `save_crash`, `nan_loss`); the tests poll files, never sleep a fixed time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from tests.util import REPO, accelerate_cmd, cli, launch, subprocess_env, wait_for

pytestmark = [pytest.mark.dist, pytest.mark.slow]

PROBE = str(Path(__file__).with_name("train_probe.py"))
MAX_STEPS = 8


def _overrides(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["train", f"data.shared_dir={shards}", f"train.run_dir={run_dir}",
            "model.width=8", "model.depth=2", "model.dropout=0.2", "data.channels=gray",
            "data.crop=48",
            "data.batch_size=2", "data.num_workers=0", "data.steps_per_epoch=3",
            f"train.max_steps={MAX_STEPS}", "train.eval_every=4", "train.log_every=1",
            "checkpoint.every_steps=2", "checkpoint.keep_last=2", "optim.lr=0.02",
            "optim.warmup_steps=1", "eval.tile=64", "eval.batch_size=1", "train.progress=false",
            "track.wandb.mode=disabled", "dist.timeout_s=1234", *extra]


def _env(**extra: str) -> dict:
    return subprocess_env(TORCH_ELASTIC_SHUTDOWN_TIMEOUT="120", **extra)


def _latest(run_dir: Path) -> str:
    p = run_dir / "checkpoints" / "latest"
    return p.read_text().strip() if p.exists() else ""


def _final_weights(run_dir: Path) -> bytes:
    return (run_dir / "checkpoints" / f"step-{MAX_STEPS:06d}" / "model.safetensors").read_bytes()


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Launch in a session of its own, so os.killpg(proc.pid) reaches the launcher."""
    with open(log, "w") as fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(accelerate_cmd(2) + ["-m", "unetdist", *args], stdout=fh,
                                stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)


def _descendants(pid: int) -> list[int]:
    """All processes below `pid` (from /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(0), [])
        out += kids
        todo += kids
    return out


def _kill_everything(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher's process group and each worker's: torch's launcher starts every
    worker in a session of its own, so killing only the launcher's group orphans them."""
    pids = [proc.pid, *_descendants(proc.pid)]
    for g in {proc.pid} | {_pgid(p) for p in pids[1:]} - {None}:
        try:
            os.killpg(g, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    wait_for(lambda: not any(_running(p) for p in pids), timeout=30, what="killed processes")


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _running(pid: int) -> bool:
    """Exists and is not a zombie (an orphan's reaping is up to init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_latest(proc: subprocess.Popen, run_dir: Path, name: str, log: Path) -> None:
    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"run exited early ({proc.returncode}):\n{log.read_text()}")
        return _latest(run_dir) == name

    wait_for(ready, timeout=240, what=f"checkpoint {name}")


def _ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from unetdist.data.ingest.writer import shard_dataset
    from unetdist.data.ingest.synth import write_synthetic

    root = tmp_path_factory.mktemp("trainer-data")
    raw = write_synthetic(root / "raw", n_train=8, n_test=0, size=(64, 64), seed=3,
                          progress=False)
    out = root / "shards"
    shard_dataset(raw, out, layout="drive", split_val=0.25, progress=False)
    return out


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory) -> dict:
    """The uninterrupted run every interrupted one is compared with (probed per rank)."""
    base = tmp_path_factory.mktemp("reference")
    run_dir, probe = base / "run", base / "probe"
    probe.mkdir()
    r = _ok(launch([PROBE, probe, *_overrides(shards, run_dir)], env=_env()))
    return {"run_dir": run_dir, "probe": probe, "out": r.stdout + r.stderr}


def test_tiny_run_completes_loss_falls_and_ranks_hold_identical_parameters(reference):
    from unetdist.config import load_config
    from unetdist.models.weights import load_weights
    from unetdist.track.jsonl import read_records

    run_dir, probe = reference["run_dir"], reference["probe"]
    assert "global batch = 2 per process x 2 processes x 1 accumulation = 4" in reference["out"]
    assert reference["out"].count("`broadcast_buffers` is deprecated") <= 1  # once per job
    recs = read_records(run_dir / "metrics.jsonl")
    train = [r for r in recs if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, MAX_STEPS + 1))
    assert sum(r["loss"] for r in train[-2:]) < sum(r["loss"] for r in train[:2])
    assert [r["step"] for r in recs if r["split"] == "val"] == [4, 8]
    p0, p1 = (torch.load(probe / f"params_{r}.pt") for r in (0, 1))
    assert p0.keys() == p1.keys() and all(torch.equal(p0[k], p1[k]) for k in p0)
    # BN statistics drift apart across ranks during training; validation (the last thing the
    # run did) broadcast rank 0's, so both ranks end with one copy
    b0, b1 = (torch.load(probe / f"buffers_{r}.pt") for r in (0, 1))
    assert any("running_mean" in k for k in b0)
    assert all(torch.equal(b0[k], b1[k]) for k in b0)
    # DDP as configured (no buffer broadcast per forward: validation's own broadcast above
    # suffices) and the collective timeout from the config (dist.timeout_s, not gloo's 1800)
    for r in (0, 1):
        ddp = json.loads((probe / f"ddp_{r}.json").read_text())
        assert ddp == {"gradient_as_bucket_view": True, "broadcast_buffers": False,
                       "bucket_bytes_cap": 25 * 2**20, "timeout_s": 1234.0}
    # rank-0 outputs: pruned checkpoints, latest, best/, curves, a loadable config.yaml
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert ckpts == ["step-000006", "step-000008"] and _latest(run_dir) == "step-000008"
    for name in ("random_states_0.pkl", "random_states_1.pkl", "trainer_state.json"):
        assert (run_dir / "checkpoints" / "step-000008" / name).is_file()
    weights, meta = load_weights(run_dir / "best" / "model.safetensors")
    assert meta["format"] == "unetdist-1" and int(meta["step"]) in (4, 8)
    clean = {k.removeprefix("module."): v for k, v in p0.items()}
    if meta["step"] == "8":
        assert all(torch.equal(weights[k], clean[k]) for k in clean)
    assert (run_dir / "plots" / "loss.png").stat().st_size > 0
    assert load_config(run_dir / "config.yaml").model.width == 8
    assert "# git " in (run_dir / "config.yaml").read_text()


def test_kill_9_of_the_process_group_then_resume_is_bitwise_identical(shards, reference,
                                                                     tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "first.log"
    proc = _start(_overrides(shards, run_dir), _env(UNETDIST_FAULT="stall:step=5"), log)
    try:
        _wait_latest(proc, run_dir, "step-000004", log)
    finally:
        _kill_everything(proc)  # the launcher and both workers, mid-run, as a node failure
    _ok(launch(_overrides(shards, run_dir), env=_env()))
    assert _final_weights(run_dir) == _final_weights(reference["run_dir"])
    from unetdist.track.jsonl import read_records

    steps = [r["step"] for r in read_records(run_dir / "metrics.jsonl") if r["split"] == "train"]
    assert steps == list(range(1, MAX_STEPS + 1))  # nothing logged twice after the resume


def test_sigusr1_preempts_both_ranks_at_one_step_and_the_resume_is_identical(shards, reference,
                                                                           tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "first.log"
    # as on SLURM: the launcher forwards SIGUSR1 to its workers (each in a session of its own)
    # only when PET_SIGNALS_TO_HANDLE lists it
    env = _env(UNETDIST_FAULT="stall:step=3",
               PET_SIGNALS_TO_HANDLE="SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
    proc = _start(_overrides(shards, run_dir), env, log)
    try:
        _wait_latest(proc, run_dir, "step-000002", log)
        # like `scancel --signal=USR1`: every process gets it, the workers a second time from
        # the launcher (ignored: the handler only sets the flag)
        workers = {_pgid(p) for p in _descendants(proc.pid)} - {None, proc.pid}
        for g in [proc.pid, *workers]:
            os.killpg(g, signal.SIGUSR1)
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            _kill_everything(proc)
    out = log.read_text()
    assert (run_dir / "PREEMPTED").read_text().strip() == "3", out
    for rank in (0, 1):
        assert f"rank {rank}: preempted (SIGUSR1); checkpoint of step 3 saved" in out, out
    step3 = run_dir / "checkpoints" / "step-000003"
    assert (step3 / "random_states_0.pkl").is_file() and (step3 / "random_states_1.pkl").is_file()
    assert _latest(run_dir) == "step-000003"
    _ok(launch(_overrides(shards, run_dir), env=_env()))
    assert not (run_dir / "PREEMPTED").exists()
    assert _final_weights(run_dir) == _final_weights(reference["run_dir"])


def test_crash_while_saving_leaves_the_previous_checkpoint_as_latest(shards, tmp_path):
    run_dir = tmp_path / "run"
    r = launch(_overrides(shards, run_dir), env=_env(UNETDIST_FAULT="save_crash:step=4"))
    assert r.returncode != 0
    assert "injected fault: crash while saving step 4" in r.stdout + r.stderr
    assert _latest(run_dir) == "step-000002"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest",
                                                                          "step-000002"]
    assert not list(run_dir.rglob(".tmp-*"))


def test_bf16_autocasts_the_forward_and_nan_on_one_rank_stops_both(shards, tmp_path):
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    probe.mkdir()
    # checkpoints by rank 0's clock only (due after every step): the decision reaches both ranks
    clock = ["checkpoint.every_steps=0", "checkpoint.every_minutes=1e-6"]
    r = launch([PROBE, probe, *_overrides(shards, run_dir, "train.precision=bf16", *clock)],
               env=_env(UNETDIST_FAULT="nan_loss:rank=1:step=3"))
    out = r.stdout + r.stderr
    assert r.returncode != 0
    for rank in (0, 1):
        assert (probe / f"dtype_{rank}.txt").read_text() == "torch.bfloat16"
    # both ranks stop with the step and rank 1's batch keys named; the job says it once
    # (global rank 0 prints a UserError, the other ranks exit quietly with the same status)
    errors = re.findall(r"error: non-finite loss at step 3 \(batch keys ([^)]*)\)", out)
    assert len(errors) == 1, out
    assert all(e.startswith("rank 1: ") and "rank 0" not in e for e in errors)
    # a checkpoint after steps 1 and 2 (every rank wrote its RNG state), none after the NaN
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    assert [p.name for p in ckpts] == ["step-000001", "step-000002"]
    assert all((p / f"random_states_{r}.pkl").is_file() for p in ckpts for r in (0, 1))


def test_resume_refuses_other_architecture_and_resume_none_on_existing_run(shards, reference):
    run_dir = reference["run_dir"]
    before = sorted(p.name for p in run_dir.rglob("*"))
    args = _overrides(shards, run_dir)
    r = cli(*args, "model.width=16", env=_env())
    assert r.returncode == 2 and "different architecture (model.width: 8 -> 16)" in r.stderr
    r = cli(*args, "train.resume=none", env=_env())
    assert r.returncode == 2 and "train.resume=none" in r.stderr
    assert sorted(p.name for p in run_dir.rglob("*")) == before  # nothing touched


def test_non_finite_gradient_norm_stops_training_without_a_later_checkpoint(shards, tmp_path):
    run_dir = tmp_path / "run"
    r = cli(*_overrides(shards, run_dir, "checkpoint.every_steps=1"),
            env=_env(UNETDIST_FAULT="inf_grad:step=3"))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "non-finite gradient norm (inf) at step 3" in r.stderr
    assert "Traceback" not in r.stderr
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert ckpts == ["step-000001", "step-000002"]
