"""Shared by the trust tests (issue 15): the tiny run's arguments, planted pickles, error lines.

The trained run itself is the session fixture `tiny_run` (tests/conftest.py)."""

from __future__ import annotations

import pickle
from pathlib import Path


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
