"""Issue 24 cases 2, 3, 4 and 9: run folders and stored configs are untrusted input.

- case 2: a corrupt model.safetensors in the resume checkpoint is one line naming it and the
  checkpoint to resume from instead;
- case 3: the config stored with a model goes through the typed, bounded config before any
  model is built (model.width=200000 asked for 1.4 TB; a list gave tracebacks);
- case 4: run-folder files are regular files of the folder, read with a size cap
  (metrics.jsonl -> /dev/full made training's start-up read eat 22.8 GB);
- case 9: `train --check` runs the validation `train` runs (data.fold, data.local_dir).

Commands run in this process through `unetdist.cli.main`, except where memory is bounded with
RLIMIT_AS (a subprocess, so that a regression fails the test instead of the machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.util import subprocess_env

TINY = ["model.width=8", "model.depth=2", "data.crop=32", "data.batch_size=2",
        "data.num_workers=0", "data.steps_per_epoch=2", "train.eval_every=0", "eval.tile=64",
        "train.progress=false", "checkpoint.every_steps=2", "track.wandb.mode=disabled"]


def _main(capsys, *args) -> tuple[int, str]:
    """(exit status, stderr) of `unetdist ARGS` run in this process."""
    from unetdist.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def _one_error(rc: int, err: str) -> str:
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Raw images and two shard folders of them: plain, and with 3 folds."""
    from unetdist.cli import main

    root = tmp_path_factory.mktemp("runtrust")
    assert main(["synth", str(root / "raw"), "--n-train", "6", "--n-test", "1",
                 "--size", "64x64", "--quiet"]) == 0
    assert main(["shard", str(root / "raw"), str(root / "shards"), "--quiet",
                 "--max-samples", "2"]) == 0
    assert main(["shard", str(root / "raw"), str(root / "folds"), "--quiet", "--folds", "3",
                 "--max-samples", "2"]) == 0
    return {"raw": root / "raw", "shards": root / "shards", "folds": root / "folds"}


# ----------------------------------------------------------------------------- case 4


def test_run_files_are_regular_files_of_the_folder(tmp_path):
    from unetdist.errors import DataError
    from unetdist.runfolder import open_run_file, read_run_text

    run = tmp_path / "run"
    run.mkdir()
    (run / "ok.json").write_text("{}")
    (run / "inside.json").symlink_to(run / "ok.json")
    assert read_run_text(run / "inside.json") == "{}"  # a link within the folder is fine
    os.mkfifo(run / "fifo.json")
    (run / "full.json").symlink_to("/dev/full")
    (tmp_path / "secret").write_text("x")
    (run / "out.json").symlink_to(tmp_path / "secret")
    t0 = time.monotonic()
    with pytest.raises(DataError, match="FIFO, not a regular file"):
        open_run_file(run / "fifo.json")  # opening a FIFO would wait for a writer
    with pytest.raises(DataError, match="outside"):
        open_run_file(run / "full.json")
    with pytest.raises(DataError, match="outside"):
        open_run_file(run / "out.json")
    assert time.monotonic() - t0 < 5
    with pytest.raises(DataError, match="character device"):
        open_run_file(Path("/dev/full"), root="/dev")
    (run / "big.json").write_bytes(b" " * 101)
    with pytest.raises(DataError, match="holds 101 bytes, over the 100"):
        read_run_text(run / "big.json", 100)


_BOUNDED = """
import resource, sys
from unetdist.cli import main
import unetdist.train.loop  # the heavy imports first: the limit is on what the run adds
vm = next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status")
          if ln.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 2 * 2**30, resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))
"""


def test_metrics_jsonl_on_dev_full_is_one_line_with_bounded_memory(data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to("/dev/full")
    args = ["train", *TINY, "train.max_steps=2", f"data.shared_dir={data['shards']}",
            f"train.run_dir={run}"]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", _BOUNDED, *args], capture_output=True, text=True,
                       env=subprocess_env(), timeout=300, check=False)
    line = _one_error(r.returncode, r.stderr)
    assert "metrics.jsonl" in line and "/dev/full" in line, line
    assert time.monotonic() - t0 < 120
    assert (run / "metrics.jsonl").is_symlink()  # refused, not replaced
    assert _one_error(*_main(capsys, "train", "--check", *args[1:])) == line  # every rank checks


def test_records_reader_refuses_a_fifo_without_waiting(tmp_path):
    from unetdist.errors import DataError
    from unetdist.track.jsonl import read_records, truncate_records

    os.mkfifo(tmp_path / "metrics.jsonl")
    for read in (read_records, lambda p: truncate_records(p, 0)):
        with pytest.raises(DataError, match="FIFO"):
            read(tmp_path / "metrics.jsonl")


def test_records_with_foreign_steps_are_dropped_not_a_traceback(tmp_path):
    from unetdist.track.jsonl import read_records, truncate_records

    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": "x"}\n[1]\n{"step": 3}\n' + "[" * 100_000 + "\n")
    assert truncate_records(p, 2) == 3  # "x", [1] and step 3 go; the torn line too
    assert read_records(p) == [{"step": 1}]


# ----------------------------------------------------------------------------- case 3


def _model_file(path: Path, config) -> Path:
    import torch

    from unetdist.models.weights import save_weights

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {} if config is None else {"config": json.dumps(config)}
    save_weights({"w": torch.zeros(2)}, path, meta)
    return path


def _stored(**model) -> dict:
    from unetdist.config import RunConfig, to_dict

    d = to_dict(RunConfig())
    d["model"].update(model)
    return d


@pytest.mark.parametrize("config,words", [
    (_stored(width=200000), ["model.width", "<= 1024"]),
    (_stored(width=600), ["model.width", "<= 512", "model.depth=4"]),
    ([1, 2], ["list", "not a mapping"]),
])
def test_a_hostile_stored_config_is_one_line_before_any_model_is_built(data, tmp_path, capsys,
                                                                      config, words):
    f = _model_file(tmp_path / "m" / "model.safetensors", config)
    runs = {
        "predict": ["predict", "--checkpoint", f, "--images", data["raw"] / "test" / "images",
                    "--out", tmp_path / "pred", "--device", "cpu"],
        "evaluate": ["evaluate", "--checkpoint", f, "--data", data["shards"], "--split", "test",
                     "--out", tmp_path / "eval"],
        "export": ["export", "--checkpoint", f, "--format", "safetensors", "--out",
                   tmp_path / "x.safetensors"],
    }
    for name, args in runs.items():
        line = _one_error(*_main(capsys, *args))
        assert str(f) in line and all(w in line for w in words), (name, line)
    assert not (tmp_path / "x.safetensors").exists()


def test_a_config_yaml_beside_the_weights_is_bounded_too(tmp_path):
    import yaml

    from unetdist.errors import UserError
    from unetdist.eval.inference import read_checkpoint

    f = _model_file(tmp_path / "best" / "model.safetensors", None)  # no config in metadata
    (f.parent / "config.yaml").write_text(yaml.safe_dump(_stored(depth=5, width=4096)))
    with pytest.raises(UserError, match=r"model.safetensors: stored config: model.width"):
        read_checkpoint(f.parent)
    (f.parent / "config.yaml").write_text("- a list\n")
    with pytest.raises(UserError, match=r"config.yaml is a list, not a mapping"):
        read_checkpoint(f.parent)


def test_a_users_yaml_over_a_bound_names_the_file_and_the_field(tmp_path, capsys):
    cfg = tmp_path / "big.yaml"
    cfg.write_text("model:\n  width: 200000\n")
    line = _one_error(*_main(capsys, "train", "--check", "--config", cfg))
    assert str(cfg) in line and "model.width must be <= 1024" in line, line
    line = _one_error(*_main(capsys, "train", "--check", "eval.tile=100000"))
    assert "eval.tile must be <= 8192" in line, line


# ----------------------------------------------------------------------------- case 9


@pytest.mark.slow  # enters `fit` (refused in its validation): the fast tier's guard counts it
@pytest.mark.parametrize("case", ["fold", "local_dir", "run_dir_parent"])
def test_check_refuses_what_train_refuses_with_the_same_line(data, tmp_path, capsys, case):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    shards = data["folds"] if case == "fold" else data["shards"]
    extra = {"fold": ["data.fold=5"], "local_dir": [f"data.local_dir={blocker}"],
             "run_dir_parent": []}[case]
    run = blocker / "run" if case == "run_dir_parent" else tmp_path / "run"
    args = [*TINY, "train.max_steps=2", f"data.shared_dir={shards}", f"train.run_dir={run}",
            *extra]
    check = _one_error(*_main(capsys, "train", "--check", *args))
    train = _one_error(*_main(capsys, "train", *args))
    assert check == train
    expected = {"fold": "data.fold must be in [0, 3), got 5",
                "local_dir": f"{blocker} (data.local_dir): a file is in the way",
                "run_dir_parent": "(train.run_dir): a file is in the way"}[case]
    assert expected in check, check
    assert blocker.read_text() == "a file"
    assert not (tmp_path / "run").exists()


def test_launch_script_stops_at_the_check_before_any_worker_starts(data, tmp_path):
    from tests.util import REPO

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  shared_dir: {data['folds']}\n  fold: 5\n")
    env = subprocess_env(PYTHON=sys.executable, CONFIG=str(cfg), NPROC="2")
    env.pop("MAIN_PORT", None)
    r = subprocess.run(["bash", str(REPO / "launch" / "train.sh"),
                        f"train.run_dir={tmp_path / 'run'}"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=300, check=False)
    line = _one_error(r.returncode, r.stderr)
    assert "data.fold must be in [0, 3), got 5" in line, line
    assert "process(es) on" not in r.stderr  # the launcher never started


def test_check_says_ok_for_a_valid_fold(data, tmp_path, capsys):
    from unetdist.cli import main

    capsys.readouterr()
    assert main(["train", "--check", *TINY, f"data.shared_dir={data['folds']}", "data.fold=2",
                 f"train.run_dir={tmp_path / 'run'}"]) == 0
    assert capsys.readouterr().out.startswith("ok: config valid")


# ----------------------------------------------------------------------------- case 2


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage header"])
def test_corrupt_weights_in_the_resume_checkpoint_is_one_line_with_the_way_back(
        data, tmp_path, capsys, damage):
    run = tmp_path / "run"
    args = [*TINY, f"data.shared_dir={data['shards']}", f"train.run_dir={run}"]
    rc, err = _main(capsys, "train", *args, "train.max_steps=4")
    assert rc == 0, err[-3000:]
    ck = run / "checkpoints"
    weights = ck / "step-000004" / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[:len(raw) // 2] if damage == "truncated" else b"\xff" * 64 + raw)
    line = _one_error(*_main(capsys, "train", *args, "train.max_steps=6"))
    assert str(weights.relative_to(tmp_path)) in line and "corrupt" in line, line
    assert f"train.resume={ck / 'step-000002'}" in line, line
    assert not (ck / "step-000006").exists()
    # the advice works: the checkpoint before resumes in a new run folder
    rc, err = _main(capsys, "train", *args[:-1], f"train.run_dir={tmp_path / 'again'}",
                    f"train.resume={ck / 'step-000002'}", "train.max_steps=4")
    assert rc == 0, err[-3000:]
    again = tmp_path / "again" / "checkpoints"  # resumed at 2: saved step 4, never step 2
    assert (again / "step-000004").is_dir() and not (again / "step-000002").exists()
