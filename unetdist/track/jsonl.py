"""Rank-0 experiment trackers behind one tiny interface.

`Tracker` is the protocol: `log(metrics, step)`, `log_masks(images, step)`, `log_model(best_dir)`,
`finish()`, `run_id`, `wants_masks`; the trainer calls exactly these. The local JSONL tracker
(`run_dir/metrics.jsonl`, one JSON object per line with a `step` key) is always on; other
backends (W&B) plug in through `open_tracker` and are fanned out by `MultiTracker`. Other ranks
get a `NullTracker`, so calling code never branches on the rank.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from unetdist.atomic import write_atomic
from unetdist.config import to_dict
from unetdist.data import jsonsafe
from unetdist.errors import DataError
from unetdist.runfolder import RECORDS_CAP, read_run_text
from unetdist.track.wandb_tracker import WandbTracker

if TYPE_CHECKING:
    from unetdist.config import RunConfig

METRICS_FILE = "metrics.jsonl"


@runtime_checkable
class Tracker(Protocol):
    @property
    def run_id(self) -> str: ...

    @property
    def wants_masks(self) -> bool:
        """Whether this tracker shows prediction masks (so validation renders them)."""

    def log(self, metrics: dict, step: int) -> None: ...

    def log_masks(self, images: list[dict], step: int) -> None: ...

    def log_model(self, best_dir: Path) -> None: ...

    def finish(self) -> None: ...


class LocalTracker:
    """Base of the trackers that keep nothing but scalars: masks and models are not theirs."""

    wants_masks = False

    def __init__(self, run_id: str = ""):
        self._run_id = run_id

    @property
    def run_id(self) -> str:
        return self._run_id

    def log_masks(self, images: list[dict], step: int) -> None:
        pass

    def log_model(self, best_dir: Path) -> None:
        pass


class NullTracker(LocalTracker):
    """What non-zero ranks get: accepts everything, writes nothing."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


def _jsonable(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; null keeps the file parseable by any reader
    return v


def _lines(p: Path) -> list[str]:
    # through the run-folder reader: a FIFO, a device or a link out of the folder is refused
    return read_run_text(p, RECORDS_CAP).splitlines()


def _parse(lines: list[str], objects_only: bool = True) -> list:
    """The records among LINES: JSON objects (any JSON value without OBJECTS_ONLY), bounded
    like every run-folder JSON (no NaN, no deep nesting); a torn line is skipped."""
    out = []
    for line in lines:
        try:
            record = jsonsafe.loads(line, "metrics.jsonl", max_bytes=RECORDS_CAP)
        except DataError:
            continue
        if isinstance(record, dict) or not objects_only:
            out.append(record)
    return out


def read_records(path: str | Path) -> list[dict]:
    """All records of a metrics.jsonl; a torn last line (crash mid-write) is skipped."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return []
    return _parse(_lines(p))


def truncate_records(path: str | Path, last_step: int) -> int:
    """Drop records with step > last_step (atomically); returns how many were dropped.

    Lines that are not a record with an integer step (torn, or not written by us) go too.
    """
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return 0
    lines = _lines(p)
    records = _parse(lines, objects_only=False)  # a line not an object is a dropped record
    keep = [r for r in records if isinstance(r, dict) and isinstance(r.get("step", 0), int)
            and r.get("step", 0) <= last_step]
    if len(keep) == len(lines):
        return 0  # nothing to drop (a torn last line still gets rewritten away)
    write_atomic(p, "".join(json.dumps(r) + "\n" for r in keep))
    return len(records) - len(keep)


class JsonlTracker(LocalTracker):
    """Appends `{"step": N, "time": unix, **metrics}` lines to run_dir/metrics.jsonl."""

    def __init__(self, run_dir: str | Path, run_id: str | None = None):
        super().__init__(run_id or uuid.uuid4().hex[:12])
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # held open for the run, line-buffered: every record is on disk when log() returns
        self._fh = open(self.path, "a", buffering=1)  # noqa: SIM115

    def log(self, metrics: dict, step: int) -> None:
        rec = {"step": int(step), "time": round(time.time(), 3)}
        rec.update({k: _jsonable(v) for k, v in metrics.items()})
        self._fh.write(json.dumps(rec) + "\n")

    def records(self) -> list[dict]:
        self._fh.flush()
        return read_records(self.path)

    def finish(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class MultiTracker:
    """Fans out to several trackers; the first one's run id is the run's."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    @property
    def run_id(self) -> str:
        return self.trackers[0].run_id

    def log(self, metrics: dict, step: int) -> None:
        for t in self.trackers:
            t.log(metrics, step)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()

    def log_model(self, best_dir: Path) -> None:
        """Hand the exported best/ folder to the backends that store models (W&B artifacts)."""
        for t in self.trackers:
            t.log_model(best_dir)

    @property
    def wants_masks(self) -> bool:
        return any(t.wants_masks for t in self.trackers)

    def log_masks(self, images: list[dict], step: int) -> None:
        for t in self.trackers:
            if t.wants_masks:
                t.log_masks(images, step)


def open_tracker(cfg: RunConfig, run_dir: str | Path, *, is_main: bool,
                 run_id: str | None = None, resume_step: int = 0) -> Tracker:
    """The run's tracker: JSONL on rank 0 (records past `resume_step` dropped), null elsewhere.

    `run_id` is the id stored in the checkpoint being resumed (None for a fresh run), so a
    resumed run continues the same tracked run. W&B joins when `cfg.track.wandb.mode` resolves
    to online/offline; its run id then is the run's (and the JSONL tracker's).
    """
    if not is_main:
        return NullTracker(run_id or "")
    truncate_records(Path(run_dir) / METRICS_FILE, resume_step)
    trackers: list = []
    if cfg.track.wandb.mode != "disabled":
        wb = WandbTracker(cfg.track.wandb, Path(run_dir), to_dict(cfg), resume_id=run_id)
        if wb.active:
            trackers.append(wb)
            run_id = wb.run_id
    return MultiTracker([JsonlTracker(run_dir, run_id), *trackers])
