"""Which checkpoint a run resumes, and whether it may: decided before anything is built.

Rank 0 lists the run folder and picks the checkpoint (`plan_resume`); every rank then reads
that checkpoint's trainer_state.json and runs the same checks, so all ranks stop on the same
error or none, before any rank writes. A different architecture or dataset is refused; a
changed hyperparameter or world size is a loud warning; a file accelerate would unpickle with
`weights_only=False` is refused, and every RNG file must hold plain data.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

from unetdist.config import RunConfig, to_dict
from unetdist.distributed import gather_objects
from unetdist.errors import DataError, UserError
from unetdist.log import warn
from unetdist.runfolder import SCHEDULER_FILE, STATE_FILE, find_resume, open_run_file
from unetdist.train.checkpoint import corrupt_weights, first_line, read_json

_CUSTOM_PICKLE = re.compile(r"^custom_checkpoint_\d+\.pkl$")  # accelerate's pattern


def plan_resume(cfg: RunConfig, acc, run_dir: Path, mhash: str) -> Path | None:
    """Pick the checkpoint to resume (rank 0 decides, every rank follows) and check it.

    Only rank 0 lists the run directory: over NFS each node's attribute cache may show a
    different newest checkpoint. Its choice (or its error) goes to every rank; every rank
    then reads that checkpoint's state, so all raise the same error or none.
    """
    choice: tuple[str, str | None] = ("ok", None)
    if acc.is_main_process:
        try:
            path = find_resume(cfg.train.resume, run_dir)
            choice = ("ok", None if path is None else str(path))
        except UserError as e:
            choice = ("error", str(e))
    kind, value = gather_objects(choice)[0]
    if kind == "error":
        raise UserError(value)
    if value is None:
        return None
    path = Path(value)
    saved = checked_identity(read_json(path, STATE_FILE), path)
    notes = check_compatible(saved, cfg.model.architecture(), mhash, acc.num_processes, path)
    refuse_code(path)
    check_files(path)
    check_rng_files(path, int(saved["world_size"]), acc.num_processes)
    read_json(path, SCHEDULER_FILE)  # fail before rank 0 writes to the run folder
    changed = changed_hyperparameters(saved["config"], to_dict(cfg))
    if changed:
        notes.append(f"resuming {path} with changed hyperparameters: " + ", ".join(changed))
    for w in notes:
        warn(w)
    return path


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


def checked_identity(saved: dict, path: Path) -> dict:
    """trainer_state.json's identity fields, typed: a tampered one is one DataError, not a
    KeyError or TypeError in the checks that read them."""
    model = saved.get("config", {}).get("model") if isinstance(saved.get("config"), dict) else None
    ws = saved.get("world_size")
    if not isinstance(model, dict) or not isinstance(ws, int) or isinstance(ws, bool) or ws < 1:
        raise DataError(f"{path / STATE_FILE} lacks a valid config.model mapping or world_size: "
                        "not a checkpoint unetdist wrote (tampered or from another program)")
    return saved


def check_files(path: Path) -> None:
    """Every file of the checkpoint is a regular file of its own (no FIFO, device or link out
    of it: loading one would block or never end) and every safetensors header parses, so a
    corrupt weights file stops all ranks here, before anything is built or written."""
    from safetensors import SafetensorError, safe_open

    for f in sorted(path.iterdir()):
        if f.is_dir() and not f.is_symlink():
            continue
        open_run_file(f, None, root=path).close()
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), framework="pt") as handle:
                    handle.keys()
            except SafetensorError as e:
                raise corrupt_weights(path, f.name, e) from None


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
            raise DataError(f"checkpoint {path}: refused {f.name}: {first_line(e)}; it is not "
                            "a random state unetdist wrote (tampered or corrupt)") from None


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
    notes = []
    if int(state.get("world_size", world_size)) != world_size:
        notes.append(
            f"resuming {path} written by {state['world_size']} processes with "
            f"{world_size}: the data order is no longer the uninterrupted run's (results differ)")
    return notes


# Settings that may change between a run and its resume without changing what is learned:
# where data and outputs live, worker counts, logging, evaluation and tracking.
RUNTIME_KEYS = ("data.shared_dir", "data.local_dir", "data.stage", "data.stage_timeout",
                "data.stall_seconds",
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
