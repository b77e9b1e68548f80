"""manifest.json of a shard folder: read and check it, list shards, hash, verify.

Shard folders live on shared storage that others can write, so a manifest is checked before
use: known format, known splits, plain file names (no paths), consistent counts.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from unetdist.errors import DataError

FORMAT = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
LAYOUTS = ("drive", "seed", "folders")  # raw layouts `unetdist shard` reads
DEFAULT_MAX_SAMPLES = 16  # small, balanced shards spread over ranks x workers
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+\.tar$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _is_count(v: object, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _check_shard(sh: object, where: str) -> None:
    if not isinstance(sh, dict):
        raise DataError(f"{where}: shard entry is not an object")
    name = sh.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.startswith("."):
        raise DataError(f"{where}: bad shard name {name!r} (expected a plain *.tar file name)")
    if not _is_count(sh.get("bytes"), 0) or not _is_count(sh.get("samples"), 1):
        raise DataError(f"{where}: shard {name}: bytes/samples missing or invalid")
    if not isinstance(sh.get("sha256"), str) or not _SHA_RE.match(sh["sha256"]):
        raise DataError(f"{where}: shard {name}: sha256 missing or invalid")


def _check_manifest(m: object, where: str) -> None:
    if not isinstance(m, dict):
        raise DataError(f"{where}: not a JSON object")
    if m.get("format") != FORMAT:
        raise DataError(f"{where}: unsupported format {m.get('format')!r} (expected {FORMAT})")
    splits = m.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise DataError(f"{where}: no splits")
    total = 0
    for split, entry in splits.items():
        if split not in SPLITS:
            raise DataError(f"{where}: unknown split {split!r} (expected {', '.join(SPLITS)})")
        if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
            raise DataError(f"{where}: split {split!r} has no shard list")
        for sh in entry["shards"]:
            _check_shard(sh, where)
        counted = sum(sh["samples"] for sh in entry["shards"])
        if entry.get("samples") != counted or not entry["shards"]:
            raise DataError(f"{where}: split {split!r} says {entry.get('samples')!r} samples, "
                            f"its shards hold {counted}")
        total += sum(sh["bytes"] for sh in entry["shards"])
    if m.get("total_bytes") != total:
        raise DataError(f"{where}: total_bytes {m.get('total_bytes')!r} != sum of shards {total}")
    names = [sh["name"] for e in splits.values() for sh in e["shards"]]
    if len(set(names)) != len(names):
        raise DataError(f"{where}: a shard name appears twice")


def read_manifest(root: str | Path) -> dict:
    """The checked manifest of shard folder `root` (DataError if missing or invalid)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"no {MANIFEST} in {root} (make a shard folder with `unetdist shard`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable or invalid JSON ({e})") from None
    _check_manifest(manifest, str(path))
    return manifest


def shard_paths(root: str | Path, split: str) -> list[str]:
    """Absolute paths of the shards of `split`, sorted (DataError naming the split if absent)."""
    manifest = read_manifest(root)
    if split not in manifest["splits"]:
        have = ", ".join(manifest["splits"])
        raise DataError(f"split {split!r} not in {Path(root) / MANIFEST} (it has: {have})")
    base = Path(root).absolute()
    return sorted(str(base / sh["name"]) for sh in manifest["splits"][split]["shards"])


def manifest_hash(manifest: dict) -> str:
    """The dataset identity: sha256 of canonical JSON of {split: [[name, sha256], ...]}."""
    ident = {split: [[sh["name"], sh["sha256"]] for sh in entry["shards"]]
             for split, entry in manifest["splits"].items()}
    canonical = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def verify_shards(root: str | Path, progress: bool = False) -> list[str]:
    """Re-hash every shard against the manifest; returns the problems found (empty = OK)."""
    from tqdm import tqdm

    from unetdist.data.tario import file_sha256

    manifest = read_manifest(root)
    shards = [sh for e in manifest["splits"].values() for sh in e["shards"]]
    problems = []
    for sh in tqdm(shards, desc="verifying", unit="shard", disable=not progress):
        path = Path(root) / sh["name"]
        if not path.is_file():
            problems.append(f"{sh['name']}: missing")
        elif (size := path.stat().st_size) != sh["bytes"]:
            problems.append(f"{sh['name']}: {size} bytes, manifest says {sh['bytes']}")
        elif (digest := file_sha256(path)) != sh["sha256"]:
            problems.append(f"{sh['name']}: sha256 {digest[:16]}... does not match the "
                            f"manifest's {sh['sha256'][:16]}...")
    return problems
