"""Shared by the trust tests (issue 15): a tiny trained run, planted pickles, error lines."""

from __future__ import annotations

import pickle
from pathlib import Path

from tests.util import cli


class _Payload:
    """Unpickling this runs `open(marker, 'w')`: proof that code from the run folder ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> None:
    """Write a pickle at PATH that creates MARKER when it is unpickled."""
    path.write_bytes(pickle.dumps(_Payload(marker)))


def train_args(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    """A tiny CPU training (2 steps per epoch, a checkpoint every 2 steps)."""
    return ["train", "model.width=8", "model.depth=2", "data.crop=32", "data.batch_size=2",
            "data.num_workers=0", "data.steps_per_epoch=2", "train.eval_every=0",
            "eval.tile=64", "train.progress=false", "checkpoint.every_steps=2",
            f"data.shared_dir={shards}", f"train.run_dir={run_dir}", *extra]


def one_error_line(r) -> str:
    """The stderr of a refused run: exactly one `error:` line and no traceback."""
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    return errors[0]


def trained_run(root: Path) -> tuple[Path, Path]:
    """(shards, run_dir) of a 2-step single-process run with checkpoint step-000002 and best/."""
    assert cli("synth", root / "raw", "--n-train", 4, "--n-test", 1, "--size", "64x64",
               "--quiet").returncode == 0
    assert cli("shard", root / "raw", root / "shards", "--layout", "drive",
               "--quiet").returncode == 0
    r = cli(*train_args(root / "shards", root / "run", "train.max_steps=2"))
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "shards", root / "run"
