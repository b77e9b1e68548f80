"""manifest.json of a shard folder: read and check it, list shards, hash, verify.

Shard folders live on shared storage that others can write, so a manifest is checked before
use: bounded JSON (`jsonsafe`), known format, known splits, plain file names (no paths),
consistent counts, and every member the readers use typed (ints are ints, lists hold strings).

K-fold manifests (`shard --folds K`) also hold `folds`: {"k", "seed", "ids": [[id, ...] per
fold], "shards": [[shard name, ...] per fold]}. Each training shard holds one fold only, so
`data.fold=i` selects whole shards: training reads the other folds' shards, "val" is fold i's.

Multi-class manifests hold `classes` (the class table, `ClassTable.to_manifest`) and, when
colour masks were snapped, `snapped`: {sample id: pixels snapped to a class colour}.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

from unetdist.data import jsonsafe
from unetdist.data.classes import ClassTable
from unetdist.data.keys import is_sample_id
from unetdist.data.tario import file_sha256
from unetdist.errors import ConfigError, DataError

FORMAT = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
LAYOUTS = ("drive", "chase", "stare", "hrf", "rite", "seed", "folders")  # raw layouts `shard` reads
FOV_SOURCES = ("file", "estimated", "none")  # where a sample's fov.png came from
DEFAULT_MAX_SAMPLES = 16  # small, balanced shards spread over ranks x workers
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+\.tar$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _short(v: object) -> str:
    """repr of a value from the file, cut short: a hostile one may be megabytes long."""
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _is_count(v: object, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _check_shard(sh: object, where: str) -> None:
    if not isinstance(sh, dict):
        raise DataError(f"{where}: shard entry is not an object")
    name = sh.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.startswith("."):
        raise DataError(f"{where}: bad shard name {_short(name)} "
                        "(expected a plain *.tar file name)")
    if not _is_count(sh.get("bytes"), 0) or not _is_count(sh.get("samples"), 1):
        raise DataError(f"{where}: shard {name}: bytes/samples missing or invalid")
    if not isinstance(sh.get("sha256"), str) or not _SHA_RE.match(sh["sha256"]):
        raise DataError(f"{where}: shard {name}: sha256 missing or invalid")


def _check_manifest(m: object, where: str) -> None:
    if not isinstance(m, dict):
        raise DataError(f"{where}: not a JSON object")
    if type(m.get("format")) is not int or m["format"] != FORMAT:
        raise DataError(f"{where}: unsupported format {_short(m.get('format'))} "
                        f"(expected {FORMAT})")
    splits = m.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise DataError(f"{where}: no splits")
    total = 0
    for split, entry in splits.items():
        if split not in SPLITS:
            raise DataError(f"{where}: unknown split {_short(split)} "
                            f"(expected {', '.join(SPLITS)})")
        if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
            raise DataError(f"{where}: split {split!r} has no shard list")
        for sh in entry["shards"]:
            _check_shard(sh, where)
        counted = sum(sh["samples"] for sh in entry["shards"])
        if not _is_count(entry.get("samples"), 1) or entry["samples"] != counted:
            raise DataError(f"{where}: split {split!r} says {_short(entry.get('samples'))} "
                            f"samples, its shards hold {counted}")
        total += sum(sh["bytes"] for sh in entry["shards"])
    if not _is_count(m.get("total_bytes"), 0) or m["total_bytes"] != total:
        raise DataError(f"{where}: total_bytes {_short(m.get('total_bytes'))} != sum of shards "
                        f"{total}")
    names = [sh["name"] for e in splits.values() for sh in e["shards"]]
    if len(set(names)) != len(names):
        raise DataError(f"{where}: a shard name appears twice")
    if m.get("folds") is not None:
        _check_folds(m["folds"], splits, where)
    _check_fov_diameter(m.get("fov_diameter", {}), where)
    ClassTable.from_manifest(m.get("classes"), where)  # a hostile table is one DataError too
    if "snapped" in m:
        _check_snapped(m["snapped"], sum(e["samples"] for e in splits.values()), where)


def _check_snapped(value: object, n_samples: int, where: str) -> None:
    """At most one count per sample, keyed by a sample id: a non-negative int of pixels."""
    ok = (isinstance(value, dict) and len(value) <= n_samples
          and all(is_sample_id(k) and _is_count(v, 0) for k, v in value.items()))
    if not ok:
        raise DataError(f"{where}: snapped must map at most {n_samples} sample ids to "
                        "non-negative pixel counts")


def _check_fov_diameter(value: object, where: str) -> None:
    """Training reads fov_diameter["train"] as a float (eval.scale=auto's reference)."""
    ok = isinstance(value, dict) and all(
        isinstance(d, int | float) and not isinstance(d, bool) and math.isfinite(d) and d >= 0
        for d in value.values())
    if not ok:
        raise DataError(f"{where}: fov_diameter must map splits to non-negative numbers")


def _str_lists(value: object, k: int) -> bool:
    """VALUE is a list of K lists of strings."""
    return (isinstance(value, list) and len(value) == k
            and all(isinstance(x, list) and all(isinstance(s, str) for s in x) for x in value))


def _check_folds(folds: object, splits: dict, where: str) -> None:
    """Fold shards partition the training shards; fold id lists are disjoint."""
    if not isinstance(folds, dict) or not _is_count(folds.get("k"), 2):
        raise DataError(f"{where}: folds must be an object with k >= 2")
    k, ids, names = folds["k"], folds.get("ids"), folds.get("shards")
    if not (_str_lists(ids, k) and _str_lists(names, k)):
        raise DataError(f"{where}: folds need {k} lists of ids and {k} lists of shard names")
    train = sorted(sh["name"] for sh in splits.get("train", {}).get("shards", []))
    if sorted(n for fold in names for n in fold) != train or "val" in splits:
        raise DataError(f"{where}: fold shards must partition the train split's shards "
                        "(and a k-fold manifest has no val split)")
    flat = [i for fold in ids for i in fold]
    if len(set(flat)) != len(flat) or any(not fold for fold in ids):
        raise DataError(f"{where}: fold id lists must be non-empty and disjoint")


def read_manifest(root: str | Path) -> dict:
    """The checked manifest of shard folder `root` (DataError if missing or invalid)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"no {MANIFEST} in {root} (make a shard folder with `unetdist shard`)")
    return parse_manifest(jsonsafe.read_bytes(path, jsonsafe.MANIFEST_BYTES), path)


def parse_manifest(raw: bytes, path: str | Path) -> dict:
    """The checked manifest in RAW, the bytes of PATH (DataError naming PATH if invalid)."""
    manifest = jsonsafe.loads(raw, str(path), max_bytes=jsonsafe.MANIFEST_BYTES)
    _check_manifest(manifest, str(path))
    return manifest


def class_table(manifest: dict) -> ClassTable:
    """What the labels of a checked manifest's shards mean (binary when it has no table)."""
    return ClassTable.from_manifest(manifest.get("classes"), MANIFEST)


def check_fold(manifest: dict, fold: int, where: str | Path) -> None:
    """ConfigError unless `fold` (data.fold) is -1 (off) or a fold of this manifest."""

    if fold < 0:
        return
    folds = manifest.get("folds")
    if not folds:
        raise ConfigError(f"data.fold={fold} but {where} has no folds (make the shards with "
                          "`unetdist shard ... --folds K`, or set data.fold=-1)")
    if fold >= folds["k"]:
        raise ConfigError(f"data.fold must be in [0, {folds['k']}), got {fold}")


def split_entries(manifest: dict, split: str, fold: int = -1) -> list[dict]:
    """The manifest's shard entries of `split`, in manifest order ([] when it has none).

    With `fold` >= 0 (data.fold), "train" is every fold but `fold` and "val" is fold `fold`.
    """
    if fold < 0 or split == "test":
        return list(manifest["splits"].get(split, {}).get("shards", []))
    check_fold(manifest, fold, MANIFEST)
    held_out = set(manifest["folds"]["shards"][fold])
    train = manifest["splits"].get("train", {}).get("shards", [])
    if split == "val":
        return [sh for sh in train if sh["name"] in held_out]
    return [sh for sh in train if sh["name"] not in held_out]


def split_names(manifest: dict, fold: int = -1) -> list[str]:
    """The splits that have samples, as `split_entries` sees them."""
    return [s for s in SPLITS if split_entries(manifest, s, fold)]


def shard_paths(root: str | Path, split: str, fold: int = -1) -> list[str]:
    """Absolute paths of the shards of `split`, sorted (DataError naming the split if absent)."""
    manifest = read_manifest(root)
    entries = split_entries(manifest, split, fold)
    if not entries:
        have = ", ".join(split_names(manifest, fold))
        raise DataError(f"split {split!r} not in {Path(root) / MANIFEST} (it has: {have})")
    base = Path(root).absolute()
    return sorted(str(base / sh["name"]) for sh in entries)


def manifest_hash(manifest: dict, fold: int = -1) -> str:
    """The dataset identity: sha256 of canonical JSON of {split: [[name, sha256], ...]}.

    A k-fold run's identity includes its fold (data.fold): resuming on another fold would mix
    validation images into training, so it counts as a different dataset.
    """
    ident: dict = {split: [[sh["name"], sh["sha256"]] for sh in entry["shards"]]
                   for split, entry in manifest["splits"].items()}
    if fold >= 0:
        ident["fold"] = fold
    canonical = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def verify_shards(root: str | Path, progress: bool = False) -> list[str]:
    """Re-hash every shard against the manifest; returns the problems found (empty = OK)."""
    from unetdist.log import progress_iter

    manifest = read_manifest(root)
    shards = [sh for e in manifest["splits"].values() for sh in e["shards"]]
    problems = []
    for sh in progress_iter(shards, len(shards), desc="verifying", unit="shard",
                            enabled=progress):
        path = Path(root) / sh["name"]
        if not path.is_file():
            problems.append(f"{sh['name']}: missing")
        elif (size := path.stat().st_size) != sh["bytes"]:
            problems.append(f"{sh['name']}: {size} bytes, manifest says {sh['bytes']}")
        elif (digest := file_sha256(path)) != sh["sha256"]:
            problems.append(f"{sh['name']}: sha256 {digest[:16]}... does not match the "
                            f"manifest's {sh['sha256'][:16]}...")
    return problems
