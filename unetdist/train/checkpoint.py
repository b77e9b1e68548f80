"""A checkpoint is one list of stateful parts: `save_checkpoint` and `load_checkpoint` below
loop over it. Also: pruning, the PREEMPTED marker, best-model export.

A checkpoint folder (layout: `unetdist.runfolder`) holds accelerate's save_state (model,
optimizer, scaler, one random_states_<rank>.pkl per rank) and our own parts, each owning its
state: `JsonPart`s in a JSON file (TrainState and RunIdentity at the top of trainer_state.json,
the budget and thread count under their keys, the LR scheduler as scheduler.json), `FilePart`s
in their own safetensors file (the EMA). `setup` builds the list once: one entry per state.

Nothing is half-written after a crash: folders and files are written under temporary names and
renamed when complete; old checkpoints are pruned only after the new one and `latest` are in
place (accelerate's `total_limit` deletes before writing: not used).

A run folder lives on storage others may write, so loading one must never run code: accelerate's
pickles are loaded with `weights_only=True`, our own state is JSON or safetensors, and
`unetdist.train.resume` refuses a `custom_checkpoint_*.pkl` (which accelerate would unpickle with
`weights_only=False`) before anything is loaded.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from unetdist.atomic import fsync_path, replace_dir, write_atomic
from unetdist.data import jsonsafe
from unetdist.distributed import gather_objects
from unetdist.errors import DataError, FileSystemError
from unetdist.log import warn
from unetdist.models.weights import save_weights
from unetdist.runfolder import (
    BEST,
    JSON_CAP,
    PREEMPTED,
    STATE_FILE,
    TMP_PREFIX,
    WEIGHTS_NAME,
    checkpoints_dir,
    list_checkpoints,
    read_latest,
    read_run_text,
    step_name,
    step_of,
    write_latest,
)
from unetdist.train.faults import fault


@runtime_checkable
class JsonPart(Protocol):
    """State kept as JSON in the checkpoint file `file`, under the key `name` ("" = the
    file's top level, shared with the other top-level parts of that file)."""

    name: str
    file: str

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class FilePart(Protocol):
    """State that writes its own file(s) into the checkpoint folder (safetensors, never a
    pickle). `load` returns False when the folder holds none; resume then says `missing`."""

    name: str
    missing: str

    def save(self, folder: Path) -> object: ...

    def load(self, folder: Path) -> bool: ...


Part = JsonPart | FilePart


@dataclass
class TrainState:
    """The trainer's progress: step, data-stream position, best metric, tracker run id."""

    step: int = 0  # optimizer steps completed
    batches: int = 0  # micro-batches this rank consumed: the data-stream position
    best_dice: float | None = None  # best validation FOV Dice so far
    best_step: int | None = None  # the step it was reached at
    skipped_in_a_row: int = 0  # consecutive fp16 overflow skips
    run_id: str = ""  # tracker run id, so a resumed run continues the same tracked run
    steps_per_epoch: int = 1  # not state: the epoch/position split written for people
    name, file = "", STATE_FILE

    def state_dict(self) -> dict:
        epoch, pos = divmod(self.batches, self.steps_per_epoch)
        return {"step": self.step, "epoch": epoch,
                "stream": {"epoch": epoch, "position": pos, "batches": self.batches},
                "best": {"metric": "val fov dice", "value": self.best_dice,
                         "step": self.best_step},
                "skipped_in_a_row": self.skipped_in_a_row, "tracker_run_id": self.run_id}

    def load_state_dict(self, d: dict) -> None:
        stream, best = d.get("stream"), d.get("best")
        if not isinstance(stream, dict) or not isinstance(best, dict):
            raise TypeError("stream and best must be objects")
        self.step, self.batches = _count(d, "step"), _count(stream, "batches")
        self.best_dice = best.get("value")  # finite: read_json refuses NaN and Infinity
        if self.best_dice is not None and type(self.best_dice) not in (int, float):
            raise TypeError(f"best.value must be a number or null, got {self.best_dice!r:.40}")
        self.best_step = None if best.get("step") is None else _count(best, "step")
        self.skipped_in_a_row = _count(d, "skipped_in_a_row")
        if not isinstance(d.get("tracker_run_id"), str):
            raise TypeError("tracker_run_id must be a string")
        self.run_id = d["tracker_run_id"]


def _count(d: dict, key: str) -> int:  # an int in [0, 2**62]: no bool, float or string
    v = d.get(key)
    if type(v) is not int or not 0 <= v <= 2**62:
        raise ValueError(f"{key} must be a count (an integer >= 0), got {str(v)[:40]!r}")
    return v


@dataclass(frozen=True)
class RunIdentity:
    """What a checkpoint belongs to: config, dataset, world size. `unetdist.train.resume`
    checks it before anything is built, so loading it back is a no-op."""

    manifest_hash: str
    world_size: int
    config: dict
    name, file = "", STATE_FILE

    def state_dict(self) -> dict:
        return {"manifest_hash": self.manifest_hash, "world_size": self.world_size,
                "config": self.config}

    def load_state_dict(self, state: dict) -> None:
        return None


def json_documents(parts: list[Part]) -> dict[str, dict]:
    """file name -> the JSON document the JSON parts make of it."""
    docs: dict[str, dict] = {}
    for p in parts:
        if isinstance(p, JsonPart):
            doc = docs.setdefault(p.file, {})
            doc.update(p.state_dict()) if p.name == "" else doc.update({p.name: p.state_dict()})
    return docs


def read_json(path: str | Path, file: str) -> dict:
    """A JSON object file of checkpoint `path` (a regular file of the folder, size-capped);
    DataError when missing or not one."""
    f = Path(path) / file
    hint = f"checkpoint {path} was written by another unetdist version or is incomplete"
    try:  # bounded: no NaN/Infinity, no nesting deep enough to break what walks it
        value = jsonsafe.loads(read_run_text(f), str(f), max_bytes=JSON_CAP)
    except DataError as e:
        raise DataError(f"{e}: {hint}") from None
    if not isinstance(value, dict):
        raise DataError(f"{f}: a {type(value).__name__}, not a JSON object: {hint}")
    return value


def read_trainer_state(path: str | Path) -> dict:
    return read_json(path, STATE_FILE)


def save_checkpoint(accelerator, run_dir: str | Path, step: int, parts: list[Part],
                    keep_last: int) -> Path:
    """Collective: every rank must call it. Returns the final checkpoint folder."""
    ckdir = checkpoints_dir(run_dir)
    final, tmp = ckdir / step_name(step), ckdir / f"{TMP_PREFIX}{step_name(step)}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        _fs_guard(lambda: tmp.mkdir(parents=True), ckdir, tmp)
    accelerator.wait_for_everyone()
    # every rank writes its own random_states_<rank>.pkl
    _fs_guard(lambda: accelerator.save_state(str(tmp)), ckdir,
              tmp if accelerator.is_main_process else None)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            _write_parts(tmp, parts)
            if fault("save_crash", step=step):
                raise RuntimeError(f"injected fault: crash while saving step {step}")
            _fsync_tree(tmp)  # on disk before the rename makes the folder count as complete
            replace_dir(tmp, final, old=_old_name(final))
            write_latest(run_dir, final.name)
            _fsync_tree(ckdir, files=False)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            fs = FileSystemError.of_write(e, ckdir, "write a checkpoint into", "train.run_dir")
            if fs is not None:
                raise fs from None
            raise
        prune(run_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def _write_parts(folder: Path, parts: list[Part]) -> None:
    docs = json_documents(parts)
    for file in docs:
        write_atomic(folder / file, json.dumps(docs[file], indent=1), durable=True)
    for p in parts:
        if isinstance(p, FilePart):
            p.save(folder)


def load_checkpoint(accelerator, path: str | Path, parts: list[Part]) -> None:
    """Collective: restore accelerate's state (model, optimizer, scaler, every rank's RNG),
    check that each rank's RNG came back, then load every part."""
    load_accelerate_state(accelerator, path)
    saved_ws = int(read_json(path, STATE_FILE)["world_size"])
    rank = accelerator.process_index
    ok = rank >= saved_ws or verify_rng_restored(path, rank)
    failed = [r for r, good in enumerate(gather_objects(ok)) if not good]
    if failed:
        raise DataError(f"checkpoint {path}: the random state of rank(s) {failed} did not load")
    load_json_parts(path, parts)
    for p in parts:
        if isinstance(p, FilePart) and not p.load(Path(path)):
            warn(f"{path} holds no {p.name}; {p.missing}")


def load_json_parts(path: str | Path, parts: list[Part]) -> None:
    """Load every JsonPart from its file of checkpoint PATH. The files are untrusted: a part
    whose state is not the shape it wrote (a missing key, a wrong type) is one DataError
    naming the file and the part, never a KeyError or TypeError from inside it."""
    docs = {p.file: read_json(path, p.file) for p in parts if isinstance(p, JsonPart)}
    for p in parts:
        if not isinstance(p, JsonPart):
            continue
        state = docs[p.file] if p.name == "" else docs[p.file].get(p.name, {})
        where = Path(path) / p.file
        try:
            if not isinstance(state, dict):
                raise TypeError(f"a {type(state).__name__}, not an object")
            p.load_state_dict(state)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            what = f"its {p.name!r} state" if p.name else f"its {type(p).__name__} state"
            why = " ".join(str(e).split())[:200] or type(e).__name__
            raise DataError(f"{where}: {what} is not what unetdist writes ({why}): "
                            "tampered or from another version; resume from another "
                            "checkpoint") from None


def prune(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints (never `latest`'s target)."""
    keep_target = read_latest(run_dir)
    found = list_checkpoints(run_dir)
    removed = []
    for _, path in found[:max(0, len(found) - keep_last)]:
        if path != keep_target:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def clean_stale(run_dir: str | Path) -> list[Path]:
    """Remove temporary folders/files a killed run left behind (call on rank 0 at start,
    holding the run lock); returns them, so that the caller can say so."""
    _restore_best(Path(run_dir))
    removed = []
    for d in (checkpoints_dir(run_dir), Path(run_dir)):
        found = [*d.glob(TMP_PREFIX + "*"), *d.glob(".*.tmp-*")] if d.is_dir() else []
        for p in sorted(found):  # .tmp-step-*, .tmp-best, .tmp-old-*, atomic-write temps
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p)
    return removed


def _fsync_tree(folder: Path, files: bool = True) -> None:
    """fsync the files directly in `folder` (accelerate's torch.save does not) and the folder."""
    paths = [p for p in folder.iterdir() if p.is_file()] if files else []
    for p in paths + [folder]:
        fsync_path(p)


def _fs_guard(write, folder: Path, tmp: Path | None) -> None:
    """Run WRITE; a failed write (full disk, permissions) removes TMP and is one clear error.
    The previous checkpoint and `latest` are untouched: nothing is renamed before all is written.
    """
    try:
        write()
    except Exception as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        fs = FileSystemError.of_write(e, folder, "write a checkpoint into", "train.run_dir")
        if fs is None:
            raise
        raise fs from None


def _old_name(dst: Path) -> Path:
    """Where `replace_dir` parks the previous copy: a fixed name, so a crash is recoverable."""
    return dst.with_name(f"{TMP_PREFIX}old-{dst.name}")


def _restore_best(run_dir: Path) -> None:
    """A crash between the two renames of replace_dir(best) leaves only the old copy."""
    old = _old_name(run_dir / BEST)
    if old.is_dir() and not (run_dir / BEST).exists():
        os.rename(old, run_dir / BEST)


def first_line(e: BaseException) -> str:
    """The informative line of an error (torch's weights_only refusal hides it mid-text)."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = "not plain data: " + text.split(marker, 1)[1].strip()
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def load_accelerate_state(accelerator, path: str | Path) -> None:
    """accelerator.load_state with a refused or corrupt file as one DataError."""
    from safetensors import SafetensorError

    try:
        with warnings.catch_warnings():  # torch's pickle-protocol warning is noise here
            warnings.simplefilter("ignore", UserWarning)
            accelerator.load_state(str(path))
    except (pickle.UnpicklingError, EOFError) as e:
        raise DataError(f"checkpoint {path}: refused a file that is not plain tensor data "
                        f"({first_line(e)}); tampered or corrupt: resume from another "
                        "checkpoint") from None
    except SafetensorError as e:
        raise corrupt_weights(Path(path), WEIGHTS_NAME, e) from None
    except (OSError, RuntimeError) as e:
        raise DataError(f"checkpoint {path} could not be loaded: {first_line(e)}") from None


def corrupt_weights(path: Path, name: str, e: BaseException) -> DataError:
    """'checkpoint P: NAME is corrupt (why); how to resume from the checkpoint before P'."""
    return DataError(f"{path / name} is corrupt or truncated ({first_line(e)}); "
                     + resume_before(path))


def resume_before(path: Path) -> str:
    """How to resume from the complete checkpoint before PATH, in words a user can paste."""
    step = step_of(path)
    run_dir = path.parent.parent
    older = [p for s, p in list_checkpoints(run_dir) if step is not None and s < step]
    if not older:
        return ("no earlier checkpoint is left: start again with train.resume=none in a new "
                "train.run_dir")
    return (f"to resume from the one before: train.resume={older[-1]} with a new "
            f"train.run_dir (or move {path.name} out of {path.parent} and keep "
            "train.resume=auto)")


def verify_rng_restored(path: str | Path, rank: int) -> bool:
    """True when this rank's torch RNG now equals the state stored in its RNG file."""
    import torch
    from accelerate.utils import load

    f = Path(path) / f"random_states_{rank}.pkl"
    if not f.is_file():
        return False
    return torch.equal(torch.get_rng_state(), load(f)["torch_manual_seed"])


def write_preempted(run_dir: str | Path, step: int) -> Path:
    p = Path(run_dir) / PREEMPTED
    write_atomic(p, f"{step}\n", durable=True)
    return p


def clear_preempted(run_dir: str | Path) -> None:
    Path(run_dir, PREEMPTED).unlink(missing_ok=True)


def export_best(state_dict: dict, config_dict: dict, config_yaml: str, metrics: dict[str, Any],
                step: int, run_dir: str | Path, extra_meta: dict | None = None) -> Path:
    """Write run_dir/best/ atomically (rank 0): weights with the config in their metadata."""
    best = Path(run_dir) / BEST
    tmp = Path(run_dir) / f"{TMP_PREFIX}{BEST}"
    shutil.rmtree(tmp, ignore_errors=True)
    meta = {"format": "unetdist-1", "config": json.dumps(config_dict), "step": str(step)}
    if "threshold" in metrics:  # eval.threshold=auto's choice travels with the weights file
        meta["threshold"] = repr(float(metrics["threshold"]))
    meta.update(extra_meta or {})  # e.g. a multi-class model's class table
    try:
        tmp.mkdir(parents=True)
        save_weights(state_dict, tmp / "model.safetensors", meta)
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / "metrics.json").write_text(json.dumps({"step": step, **metrics}, indent=1) + "\n")
    except OSError as e:  # the previous best/ is untouched: only tmp was written
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileSystemError.of(e, best, "write the best model to", "train.run_dir") from None
    replace_dir(tmp, best, old=_old_name(best))
    return best
