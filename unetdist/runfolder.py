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
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from unetdist.atomic import write_atomic
from unetdist.errors import UserError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.json"
PREEMPTED = "PREEMPTED"
BEST = "best"
WEIGHTS_NAME = "model.safetensors"
TMP_PREFIX = ".tmp-"
_STEP_RE = re.compile(r"^step-(\d{6,})$")


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
    trainer_state.json beside it (which also sets meta's missing "step")."""
    if "config" in meta:
        try:
            return json.loads(meta["config"])
        except ValueError as e:
            raise UserError(f"{wf}: bad config in metadata ({e})") from None
    if (wf.parent / "config.yaml").is_file():
        import yaml

        return yaml.safe_load((wf.parent / "config.yaml").read_text())
    if (wf.parent / STATE_FILE).is_file():  # a checkpoints/step-N folder (accelerate's state)
        try:
            state = json.loads((wf.parent / STATE_FILE).read_text())
            meta.setdefault("step", str(state["step"]))
            return dict(state["config"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{wf.parent / STATE_FILE} is unreadable ({e}): not a checkpoint "
                            "written by unetdist train") from None
    raise UserError(f"{wf} has no model config in its metadata and no config.yaml or "
                    f"{STATE_FILE} beside it")
