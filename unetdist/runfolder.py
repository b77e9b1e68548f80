"""The run folder: its layout, the `latest` pointer, `--checkpoint` and `train.resume` forms,
and the config stored with a checkpoint or best/ model.

Layout under run_dir:
    checkpoints/step-000500/   accelerate's save_state (model.safetensors, optimizer.bin,
                               scaler.pt, random_states_<rank>.pkl for every rank) +
                               trainer_state.json + scheduler.json (+ ema.safetensors)
    checkpoints/latest         the name of the newest complete checkpoint
    best/                      model.safetensors, config.yaml, metrics.json
    PREEMPTED                  the step saved when a preemption signal stopped the run

Training writes the folder (`unetdist.train.checkpoint`); training, evaluation and export all
read it through this module, so eval never imports train. Pure reads, except `write_latest`.

A run folder may sit on storage others can write: every file read from one goes through
`open_run_file`, which opens regular files only (a FIFO would block, a device never end) and
never follows a symlink out of the folder, and refuses a file over its size cap before reading.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO

from unetdist.atomic import write_atomic
from unetdist.errors import DataError, UserError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.json"
PREEMPTED = "PREEMPTED"
BEST = "best"
WEIGHTS_NAME = "model.safetensors"
TMP_PREFIX = ".tmp-"
_STEP_RE = re.compile(r"^step-(\d{6,})$")
# size caps of the files read whole: far above what unetdist writes, far below a machine's memory
JSON_CAP = 16 * 2**20  # trainer_state.json, scheduler.json, metrics.json, config.yaml
RECORDS_CAP = 512 * 2**20  # metrics.jsonl: a line per log_every steps


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_run_file(path: str | Path, max_bytes: int | None = None, *,
                  root: str | Path | None = None) -> BinaryIO:
    """PATH opened for binary reading, if it is a regular file of at most MAX_BYTES.

    A symlink is followed only when its target stays inside ROOT (default: PATH's folder).
    The checks are made on the opened descriptor (O_NONBLOCK: opening a FIFO does not wait),
    so the file cannot be swapped between check and read. DataError (one line) otherwise.
    """
    path = Path(path)
    top = Path(root if root is not None else path.parent).resolve()
    real = path.resolve()
    if path.is_symlink() and not real.is_relative_to(top):
        raise DataError(f"{path} is a symlink to {real}, outside {top}: refusing to read it "
                        "(a run folder's files are its own; replace the link with the file)")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = f"is {_kind(st.st_mode)}, not a regular file"
    elif max_bytes is not None and st.st_size > max_bytes:
        problem = f"holds {st.st_size} bytes, over the {max_bytes} a {path.name} may hold"
    if problem:
        os.close(fd)
        raise DataError(f"{path} {problem}: refusing to read it (remove or replace it)")
    return os.fdopen(fd, "rb")


def read_run_text(path: str | Path, max_bytes: int = JSON_CAP, *,
                  root: str | Path | None = None) -> str:
    """The UTF-8 text of a run-folder file, through `open_run_file` (at most MAX_BYTES)."""
    with open_run_file(path, max_bytes, root=root) as f:
        data = f.read(max_bytes + 1)  # bounded even if the file grows after the check
    if len(data) > max_bytes:
        raise DataError(f"{path} grew over {max_bytes} bytes while being read")
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def step_of(path: Path) -> int | None:
    """The step a `step-N` folder name holds, or None for another name."""
    m = _STEP_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed folders holding trainer_state.json), oldest first."""
    d = checkpoints_dir(run_dir)
    found = []
    for p in d.iterdir() if d.is_dir() else ():
        step = step_of(p)
        if step is not None and (p / STATE_FILE).is_file():
            found.append((step, p))
    return sorted(found)


def write_latest(run_dir: str | Path, name: str) -> None:
    # fsynced: it points at checkpoints that must exist after a power loss
    write_atomic(checkpoints_dir(run_dir) / LATEST, name + "\n", durable=True)


def read_latest(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume: the newest complete one.

    That is the one `latest` names, except after a crash between a checkpoint's rename and the
    pointer update, which leaves a newer complete folder (`latest` is for people and scripts).
    """
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def find_resume(resume: str, run_dir: str | Path) -> Path | None:
    """The checkpoint `train.resume` selects (auto | none | <path>), or None for a fresh start.

    Pure reads, so every rank reaches the same answer (or the same error) before any writes.
    """
    existing = read_latest(run_dir)
    if resume == "none":
        if existing is not None:
            raise UserError(f"train.resume=none but {run_dir} already holds checkpoints (latest "
                            f"{existing.name}); nothing was overwritten: use train.resume=auto "
                            "to continue it or choose a new train.run_dir")
        return None
    if resume == "auto":
        return existing
    path = Path(resume)
    if (path / CHECKPOINTS).is_dir():
        path = read_latest(path) or path
    if not (path / STATE_FILE).is_file():
        raise UserError(f"train.resume={resume}: not a checkpoint folder (no {STATE_FILE}) nor a "
                        "run directory holding checkpoints")
    step = step_of(path)
    if existing is not None and step is not None and existing.resolve() != path.resolve():
        newer = [p.name for s, p in list_checkpoints(run_dir) if s > step]
        if newer:
            raise UserError(f"train.resume={resume} is older than checkpoints already in "
                            f"{run_dir} ({newer[-1]}); resume into a new train.run_dir")
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """The folder or file a `--checkpoint` names, with run-folder shortcuts resolved.

    Accepted: a best/ folder or an exported .safetensors file; a run folder (-> its best/, or
    its newest checkpoint when no best/ exists yet); a checkpoints/step-N folder; the
    checkpoints/latest pointer file or the checkpoints/ folder (-> the newest checkpoint).
    """
    p = Path(path)
    if p.is_file() and p.name == LATEST:
        p = p.parent
    if p.is_dir() and p.name == CHECKPOINTS:
        newest = read_latest(p.parent)
        if newest is None:
            raise UserError(f"checkpoint not found: {p} holds no complete checkpoint")
        return newest
    if p.is_dir() and not (p / WEIGHTS_NAME).is_file():
        if (p / BEST / WEIGHTS_NAME).is_file():
            return p / BEST
        newest = read_latest(p)
        if newest is not None:
            return newest
    return p


def weights_file(path: str | Path) -> Path:
    """The safetensors file of a resolved checkpoint folder or the file itself."""
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_NAME
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p} (expected a run folder, its best/ folder, a "
                        "checkpoints/step-N folder, checkpoints/latest or a .safetensors file)")
    return p


def stored_config(wf: Path, meta: dict) -> dict:
    """The run config of a weights file: its metadata, else config.yaml or the checkpoint's
    trainer_state.json beside it (which also sets meta's missing "step").

    Untrusted like the file: anything but a mapping is one DataError naming where it came
    from; the caller validates the values (`config_from_dict`) before building anything.
    """
    if "config" in meta:
        try:
            return _mapping(json.loads(meta["config"]), f"{wf}: the config in its metadata")
        except (ValueError, RecursionError) as e:
            raise DataError(f"{wf}: bad config in metadata ({str(e)[:200]})") from None
    if (wf.parent / "config.yaml").is_file():
        import yaml

        where = wf.parent / "config.yaml"
        try:
            return _mapping(yaml.safe_load(read_run_text(where)), str(where))
        except (yaml.YAMLError, RecursionError) as e:
            raise DataError(f"{where} is not valid YAML ({str(e).splitlines()[0]})") from None
    if (wf.parent / STATE_FILE).is_file():  # a checkpoints/step-N folder (accelerate's state)
        state = read_run_json(wf.parent / STATE_FILE, "not a checkpoint written by unetdist train")
        if "step" in state:
            meta.setdefault("step", str(state["step"]))
        return _mapping(state.get("config"), f"{wf.parent / STATE_FILE}: its \"config\"")
    raise UserError(f"{wf} has no model config in its metadata and no config.yaml or "
                    f"{STATE_FILE} beside it")


def _mapping(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{where} is a {type(value).__name__}, not a mapping of config "
                        "sections: not a config unetdist wrote")
    return value


def read_run_json(path: str | Path, hint: str, max_bytes: int = JSON_CAP) -> dict:
    """A JSON object file of a run folder (through `open_run_file`); DataError naming PATH
    and HINT (what it means for the user) when it is missing, unreadable or not an object."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{path} is missing: {hint}")
    try:
        value = json.loads(read_run_text(path, max_bytes))
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path} is unreadable (not valid JSON: {str(e)[:200]}): {hint}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} is unreadable (a {type(value).__name__}, not a JSON object): "
                        f"{hint}")
    return value
