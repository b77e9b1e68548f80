from tests.util import cli


def test_help_lists_commands():
    r = cli("--help")
    assert r.returncode == 0 and "doctor" in r.stdout and "config" in r.stdout


def test_doctor_ok_on_this_machine(tmp_path):
    r = cli("doctor", "--path", tmp_path)
    assert r.returncode == 0, r.stderr
    for needle in ("torch", "cuda available", "gloo", "accelerate", "webdataset", "wandb",
                   f"free at {tmp_path}"):
        assert needle in r.stdout
    assert "ok: training can run here" in r.stdout


def test_doctor_reports_distributed_env(tmp_path):
    from tests.util import subprocess_env
    r = cli("doctor", env=subprocess_env(WORLD_SIZE="4", SLURM_JOB_ID="1234"))
    assert "WORLD_SIZE" in r.stdout and "1234" in r.stdout


def test_doctor_fails_on_missing_path(tmp_path):
    r = cli("doctor", "--path", tmp_path / "missing")
    assert r.returncode == 1
    assert "path does not exist" in r.stderr and "missing" in r.stderr
