"""Checkpoints, the `latest` pointer, resume checks, best-model export, the PREEMPTED marker.

Layout under run_dir:
    checkpoints/step-000500/   accelerate's save_state (model.safetensors, optimizer.bin,
                               scaler.pt, random_states_<rank>.pkl for every rank) +
                               trainer_state.json + scheduler.json
    checkpoints/latest         the name of the newest complete checkpoint
    best/                      model.safetensors, config.yaml, metrics.json
    PREEMPTED                  the step saved when a preemption signal stopped the run

Nothing is half-written after a crash: folders are written under a temporary name and renamed
when complete, small files are written to a temporary name and os.replace'd, and old
checkpoints are pruned only after the new one and `latest` are in place. accelerate's own
`total_limit` deletes before writing, which is why it is not used.

A run folder lives on storage others may write, so loading one must never run code: the
pickles accelerate writes (optimizer.bin, random_states_<rank>.pkl, scaler.pt) are loaded with
`weights_only=True`, our own state is JSON, and a `custom_checkpoint_*.pkl` (which accelerate
would unpickle with `weights_only=False`) is refused before anything is loaded.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unetdist.atomic import fsync_path, replace_dir, write_atomic
from unetdist.errors import DataError, FileSystemError, UserError
from unetdist.models.weights import save_weights
from unetdist.train.faults import fault

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.json"
_CUSTOM_PICKLE = re.compile(r"^custom_checkpoint_\d+\.pkl$")  # accelerate's pattern
PREEMPTED = "PREEMPTED"
BEST = "best"
TMP_PREFIX = ".tmp-"
_STEP_RE = re.compile(r"^step-(\d{6,})$")


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed folders holding trainer_state.json), oldest first."""
    d = checkpoints_dir(run_dir)
    found = []
    for p in d.iterdir() if d.is_dir() else ():
        m = _STEP_RE.match(p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
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


def save_checkpoint(accelerator, run_dir: str | Path, step: int, trainer_state: dict,
                    keep_last: int, scheduler_state: dict,
                    extra: Callable[[Path], object] | None = None) -> Path:
    """Collective: every rank must call it. Returns the final checkpoint folder.

    `extra(folder)` writes more files (the EMA weights) into it on rank 0 before the rename.
    """
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
            write_atomic(tmp / SCHEDULER_FILE, json.dumps(scheduler_state, indent=1),
                         durable=True)
            write_atomic(tmp / STATE_FILE, json.dumps(trainer_state, indent=1), durable=True)
            if extra is not None:
                extra(tmp)
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


def read_trainer_state(path: str | Path) -> dict:
    try:
        return json.loads((Path(path) / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"checkpoint {path} has no readable {STATE_FILE}: {e}") from None


def refuse_code(path: str | Path) -> None:
    """A checkpoint holding a file accelerate would unpickle with weights_only=False is refused.

    unetdist never writes `custom_checkpoint_*.pkl` (nothing is registered for checkpointing),
    so one there was planted or comes from an older version; loading it could run any code.
    """
    found = sorted(p.name for p in Path(path).iterdir() if _CUSTOM_PICKLE.match(p.name))
    if found:
        raise DataError(f"checkpoint {path} contains {found[0]}, a pickle that loading would "
                        "execute; refusing it (unetdist writes none): remove the file only if "
                        "you made it yourself, or resume from another checkpoint")


def check_rng_files(path: str | Path, saved_world_size: int, world_size: int) -> None:
    """Every rank's RNG file must be there (accelerate only logs at INFO when one is missing)
    and hold plain data. Every rank checks all of them, so all ranks stop on the same error."""
    from accelerate.utils import load

    for r in range(min(saved_world_size, world_size)):
        f = Path(path) / f"random_states_{r}.pkl"
        if not f.is_file():
            raise DataError(f"checkpoint {path} is incomplete: {f.name} is missing")
        try:
            with warnings.catch_warnings():  # torch warns about the protocol of any pickle
                warnings.simplefilter("ignore")
                load(f)  # weights_only=True: only tensors, numbers and numpy arrays
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError,
                AttributeError, ImportError) as e:
            raise DataError(f"checkpoint {path}: refused {f.name}: {_first_line(e)}; it is not "
                            "a random state unetdist wrote (tampered or corrupt)") from None


def _first_line(e: BaseException) -> str:
    """The informative line of an error (torch's weights_only refusal hides it mid-text)."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = "not plain data: " + text.split(marker, 1)[1].strip()
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def load_accelerate_state(accelerator, path: str | Path) -> None:
    """accelerator.load_state with a refused or corrupt file as one DataError."""
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol warning is noise here
            warnings.simplefilter("ignore", UserWarning)
            accelerator.load_state(str(path))
    except (pickle.UnpicklingError, EOFError) as e:
        raise DataError(f"checkpoint {path}: refused a file that is not plain tensor data "
                        f"({_first_line(e)}); tampered or corrupt: resume from another "
                        "checkpoint") from None
    except (OSError, RuntimeError) as e:
        raise DataError(f"checkpoint {path} could not be loaded: {_first_line(e)}") from None


def read_scheduler_state(path: str | Path) -> dict:
    f = Path(path) / SCHEDULER_FILE
    try:
        state = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"checkpoint {path} has no readable {SCHEDULER_FILE} ({e}); it was "
                        "written by another unetdist version or is incomplete") from None
    if not isinstance(state, dict):
        raise DataError(f"{f}: expected a JSON object")
    return state


def verify_rng_restored(path: str | Path, rank: int) -> bool:
    """True when this rank's torch RNG now equals the state stored in its RNG file."""
    import torch
    from accelerate.utils import load

    f = Path(path) / f"random_states_{rank}.pkl"
    if not f.is_file():
        return False
    return torch.equal(torch.get_rng_state(), load(f)["torch_manual_seed"])


def check_compatible(state: dict, architecture: dict, manifest_hash: str, world_size: int,
                     path: str | Path) -> list[str]:
    """Refuse a different architecture or dataset; return warnings (e.g. world size)."""
    saved_arch = dict(state["config"]["model"])
    diff = sorted(k for k in architecture if saved_arch.get(k) != architecture[k])
    if diff:
        pairs = ", ".join(f"model.{k}: {saved_arch.get(k)!r} -> {architecture[k]!r}" for k in diff)
        raise UserError(f"cannot resume {path}: different architecture ({pairs}); "
                        "to train the new architecture use a new train.run_dir; to continue "
                        "this run keep its model settings")
    if state.get("manifest_hash") != manifest_hash:
        raise UserError(f"cannot resume {path}: it was trained on a different dataset (manifest "
                        f"hash {str(state.get('manifest_hash'))[:12]} != {manifest_hash[:12]})")
    warnings = []
    if int(state.get("world_size", world_size)) != world_size:
        warnings.append(
            f"resuming {path} written by {state['world_size']} processes with "
            f"{world_size}: the data order is no longer the uninterrupted run's (results differ)")
    return warnings


# Settings that may change between a run and its resume without changing what is learned:
# where data and outputs live, worker counts, logging, evaluation and tracking.
RUNTIME_KEYS = ("data.shared_dir", "data.local_dir", "data.stage", "data.stage_timeout",
                "data.num_workers", "data.cache", "model.channels_last", "model.compile",
                "train.run_dir", "train.resume", "train.progress", "train.log_every",
                "train.eval_every", "eval.", "track.", "checkpoint.")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def changed_hyperparameters(saved: dict, current: dict) -> list[str]:
    """'key: old -> new' for every non-runtime setting that differs from the checkpoint's."""
    old, new = _flatten(saved), _flatten(current)
    keys = sorted(k for k in old.keys() | new.keys()
                  if not any(k == r or (r.endswith(".") and k.startswith(r))
                             for r in RUNTIME_KEYS) and old.get(k) != new.get(k))
    return [f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in keys]


def write_preempted(run_dir: str | Path, step: int) -> Path:
    p = Path(run_dir) / PREEMPTED
    write_atomic(p, f"{step}\n", durable=True)
    return p


def clear_preempted(run_dir: str | Path) -> None:
    Path(run_dir, PREEMPTED).unlink(missing_ok=True)


def export_best(state_dict: dict, config_dict: dict, config_yaml: str, metrics: dict[str, Any],
                step: int, run_dir: str | Path) -> Path:
    """Write run_dir/best/ atomically (rank 0): weights with the config in their metadata."""

    best = Path(run_dir) / BEST
    tmp = Path(run_dir) / f"{TMP_PREFIX}{BEST}"
    shutil.rmtree(tmp, ignore_errors=True)
    meta = {"format": "unetdist-1", "config": json.dumps(config_dict), "step": str(step)}
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
    m = _STEP_RE.match(path.name)
    if existing is not None and m and existing.resolve() != path.resolve():
        newer = [p.name for s, p in list_checkpoints(run_dir) if s > int(m.group(1))]
        if newer:
            raise UserError(f"train.resume={resume} is older than checkpoints already in "
                            f"{run_dir} ({newer[-1]}); resume into a new train.run_dir")
    return path
