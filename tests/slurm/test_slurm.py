"""slurm/train.sbatch on a real two-node Slurm cluster (two slurmd "nodes" on this host).

- the cluster itself: a 2-node srun gives each node its own SLURM_NODEID;
- the script's orchestration with a stand-in trainer (fast): per-node staging, machine ranks,
  a gloo all-reduce across both nodes, USR1 forwarding, requeue on PREEMPTED, resume;
- the real trainer: stage on each node, train across both, checkpoint, evaluate best/; then a
  preempted + requeued + resumed run ends with bitwise the same weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.slurm.cluster import SlurmCluster
from tests.util import REPO, wait_for

# one worker: the session's cluster listens on fixed ports (tests/slurm/cluster.py)
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]

SBATCH = REPO / "slurm" / "train.sbatch"
SIZE = (64, 64)
TINY = {  # one CPU process per node, width-8 UNet, 64 px
    "seed": 0,
    "data": {"crop": 48, "batch_size": 2, "num_workers": 0, "steps_per_epoch": 5,
             "aug": {"rotate_deg": 0.0, "scale": 0.0}},
    "model": {"width": 8, "depth": 2},
    "optim": {"lr": 3e-3, "schedule": "constant"},
    "train": {"max_steps": 12, "eval_every": 6, "log_every": 2, "progress": False},
    "eval": {"tile": 64, "num_overlays": 1, "auc_bins": 100},
    "checkpoint": {"every_steps": 3, "keep_last": 2},
    "track": {"wandb": {"mode": "disabled"}},
}
STALL_STEP = 5  # the preempted run waits before this step until USR1 arrives


def _submit(cluster: SlurmCluster, tmp: Path, args: list[str], nodes: int = 2,
            **env: str) -> tuple[str, Path]:
    out = tmp / "job.out"
    job = cluster.sbatch(f"--nodes={nodes}", f"--output={out}", str(SBATCH), *args,
                         env=cluster.job_env(**env), cwd=tmp)
    return job, out


def _log(out: Path) -> str:
    return out.read_text(errors="replace") if out.exists() else "(no job output yet)"


def _wait_running_until(cluster: SlurmCluster, job: str, out: Path, pred, what: str) -> None:
    """Poll `pred` while the job lives; a job that ends first fails with its log."""
    def check():
        if pred():
            return True
        state = cluster.job(job).get("JobState", "GONE")
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), \
            f"job ended ({state}) before {what}:\n{_log(out)}"
        return False

    wait_for(check, timeout=180, interval=0.2, what=what)


def _finish(cluster: SlurmCluster, job: str, out: Path, timeout: float = 240) -> dict:
    info = cluster.wait_job(job, timeout=timeout)
    assert info["JobState"] == "COMPLETED", f"{info['JobState']} {info.get('ExitCode')}:\n" \
                                            f"{_log(out)}"
    return info


def test_cluster_runs_a_two_node_step(slurm_cluster, tmp_path):
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/bash\nsrun --ntasks-per-node=1 bash -c "
                      "'echo \"$SLURMD_NODENAME $SLURM_NODEID $SLURM_NNODES\"'\n")
    out = tmp_path / "hello.out"
    job = slurm_cluster.sbatch("--nodes=2", f"--output={out}", str(script), cwd=tmp_path)
    _finish(slurm_cluster, job, out, timeout=60)
    assert sorted(out.read_text().split("\n")[:2]) == ["n1 0 2", "n2 1 2"]


# ----------------------------------------------------------------------------- stand-in trainer


@pytest.mark.parametrize("nodes", [2, 1])
def test_sbatch_orchestration_with_a_stand_in_trainer(slurm_cluster, tmp_path, nodes):
    """2 nodes: one launcher per node, gloo across them. 1 node, 1 process: no launcher."""
    pkg = tmp_path / "fake" / "unetdist"
    pkg.mkdir(parents=True)
    shutil.copy(Path(__file__).with_name("fake_unetdist.py"), pkg / "__main__.py")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "manifest.json").write_text('{"format": 1, "splits": {}}')
    (tmp_path / "cfg.yaml").write_text("seed: 0\n")
    run = tmp_path / "run"
    steps = 25
    # the job runs in tmp_path, so `python -m unetdist` finds the stand-in, not the repo's
    job, out = _submit(slurm_cluster, tmp_path,
                       [f"train.max_steps={steps}", "fake.pause=0.1", "fake.extra=two words"],
                       nodes=nodes, PYTHONPATH=str(tmp_path / "fake"), CONFIG="cfg.yaml",
                       SHARED_DATA=str(shared), LOCAL_DATA=str(tmp_path / "local" / "%n"),
                       RUN_DIR=str(run))
    _wait_running_until(slurm_cluster, job, out, (run / "progress").exists, "the first step")
    r = slurm_cluster.run("scancel", "--signal=USR1", "--batch", job)
    assert r.returncode == 0, r.stderr
    info = _finish(slurm_cluster, job, out, timeout=120)
    log = _log(out)

    assert int(info["Restarts"]) == 1, log
    assert log.count("requeueing job") == 1 and "restart 1:" in log, log
    assert not (run / "PREEMPTED").exists()
    ranks = sorted(json.loads((run / "result.json").read_text()), key=lambda r: r["rank"])
    names = ["n1", "n2"][:nodes]
    assert [(r["rank"], r["node_id"], r["node"]) for r in ranks] == \
        [(i, i, n) for i, n in enumerate(names)]
    assert {r["world"] for r in ranks} == {nodes} and {r["restart"] for r in ranks} == {1}
    assert {r["launcher"] for r in ranks} == {nodes > 1}
    # each step all-reduces (rank+1)*(step+1): no step lost or repeated across the requeue
    assert {r["total"] for r in ranks} == {sum(range(1, nodes + 1)) * steps * (steps + 1) / 2}
    assert [r["local_dir"] for r in ranks] == [str(tmp_path / "local" / n) for n in names]
    assert {r["stage"] for r in ranks} == {"false"} and {r["extra"] for r in ranks} == {"two words"}
    for node in names:
        assert (tmp_path / "local" / node / "staged-by").read_text() == node
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert metrics == {"data": str(tmp_path / "local" / "n1"), "node": "n1"}


# ----------------------------------------------------------------------------- the real trainer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    root = tmp_path_factory.mktemp("slurmdata")
    raw = write_synthetic(root / "raw", n_train=4, n_test=2, size=SIZE, progress=False)
    shards = root / "shared" / "shards"  # stands for shared storage
    shard_dataset(raw, shards, layout="drive", progress=False)
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    return {"root": root, "shards": shards, "config": cfg}


def test_stage_only_job_copies_the_shards_to_every_node(slurm_cluster, dataset, tmp_path):
    import hashlib

    shared = dataset["shards"]
    out = tmp_path / "stage.out"
    env = slurm_cluster.job_env(SHARED_DATA=str(shared), LOCAL_DATA=str(tmp_path / "%n" / "s"))
    job = slurm_cluster.sbatch("--nodes=2", f"--output={out}", str(REPO / "slurm" / "stage.sbatch"),
                               env=env, cwd=tmp_path)
    _finish(slurm_cluster, job, out, timeout=60)
    manifest = json.loads((shared / "manifest.json").read_text())
    shards = [s for split in manifest["splits"].values() for s in split["shards"]]
    for node in ("n1", "n2"):
        local = tmp_path / node / "s"
        assert (local / "manifest.json").read_bytes() == (shared / "manifest.json").read_bytes()
        for s in shards:
            assert hashlib.sha256((local / s["name"]).read_bytes()).hexdigest() == s["sha256"]


def _train_job(cluster, dataset, tmp: Path, name: str, **env: str) -> tuple[str, Path, Path]:
    run = tmp / name
    job, out = _submit(cluster, tmp, [], CONFIG=str(dataset["config"]),
                       SHARED_DATA=str(dataset["shards"]),
                       LOCAL_DATA=str(tmp / f"local-{name}" / "%n"), RUN_DIR=str(run), **env)
    return job, out, run


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster, dataset, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("slurm_run_a")
    job, out, run = _train_job(slurm_cluster, dataset, tmp, "run-a")
    info = _finish(slurm_cluster, job, out)
    return {"tmp": tmp, "run": run, "log": _log(out), "info": info}


def test_two_node_job_stages_trains_checkpoints_and_evaluates(uninterrupted):
    from unetdist.train.checkpoint import read_latest, read_trainer_state

    run, tmp = uninterrupted["run"], uninterrupted["tmp"]
    for node in ("n1", "n2"):  # one verified local copy per node
        assert (tmp / "local-run-a" / node / "manifest.json").is_file(), uninterrupted["log"]
    latest = read_latest(run)
    assert latest is not None and latest.name.endswith(f"{TINY['train']['max_steps']:06d}")
    assert read_trainer_state(latest)["world_size"] == 2
    assert (run / "best" / "model.safetensors").is_file()
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert metrics["num_images"] == 2
    assert 0.0 <= metrics["fov"]["dice"] <= 1.0
    assert int(uninterrupted["info"]["Restarts"]) == 0


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _model_file(checkpoint: Path) -> Path:
    files = sorted(checkpoint.glob("model*.safetensors"))
    assert len(files) == 1, list(checkpoint.iterdir())
    return files[0]


def test_preempted_job_requeues_resumes_and_matches_the_uninterrupted_run(
        slurm_cluster, dataset, uninterrupted, tmp_path):
    import torch

    from unetdist.train.checkpoint import read_latest

    job, out, run = _train_job(slurm_cluster, dataset, tmp_path, "run-b",
                               UNETDIST_FAULT=f"stall:step={STALL_STEP}")
    _wait_running_until(slurm_cluster, job, out, lambda: read_latest(run) is not None,
                        "the first checkpoint of the run to be preempted")
    r = slurm_cluster.run("scancel", "--signal=USR1", "--batch", job)
    assert r.returncode == 0, r.stderr
    info = _finish(slurm_cluster, job, out)
    log = _log(out)
    assert int(info["Restarts"]) == 1, log
    # USR1 came after checkpoint 3 and before the stall at STALL_STEP released: mid-interval
    preempted_at = int(log.split("training checkpointed at step ")[1].split()[0])
    assert 3 < preempted_at <= STALL_STEP, log
    restarted = log.split("restart 1:")[1]
    assert f"resumed at step {preempted_at} " in restarted, log  # not a fresh start
    assert not (run / "PREEMPTED").exists()

    a, b = read_latest(uninterrupted["run"]), read_latest(run)
    assert a.name == b.name
    wa, wb = _weights(_model_file(a)), _weights(_model_file(b))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ"
    ba = _weights(uninterrupted["run"] / "best" / "model.safetensors")
    bb = _weights(run / "best" / "model.safetensors")
    assert all(torch.equal(ba[k], bb[k]) for k in ba)
    assert (run / "eval-test" / "metrics.json").is_file()
