"""Fuzz targets: hostile inputs, fed in-process to the code that reads them.

A target is one function plus its registration line:

    @target("shard-verify")
    def shard_verify(case: Path, data) -> Callable[[], object]:
        ...build hostile input under CASE with data.draw(...)...
        return lambda: cli_call("shard", "--verify", str(case / "shards"))

It writes its input under CASE (a fresh empty folder) using hypothesis draws, then returns
the call to check; `oracle.run_case` runs that call with CASE as its only writable folder and
holds it to the property (success or a one-line UserError; no hang, memory or outside write).
`test_fuzz.py` runs every registered target; FUZZ_CASES cases in all are shared among them.
Mutations live in `mutate.py`, sound shard folders to start from in `shardkit.py`.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path

from hypothesis import strategies as st

from tests.fuzz import mutate, shardkit
from unetdist.errors import UserError

Target = Callable[[Path, st.DataObject], Callable[[], object]]
TARGETS: dict[str, Target] = {}
SHARES: dict[str, float] = {}  # a target's share of FUZZ_CASES, relative to the others
NEEDS_RUN: set[str] = set()  # targets that copy the session's tiny trained run (`runkit`)


def target(name: str, share: float = 1.0, needs_run: bool = False
           ) -> Callable[[Target], Target]:
    """Register a target; SHARE < 1 gives a slow one (e.g. fsyncing) fewer of the cases.
    NEEDS_RUN: it mutates a copy of a trained run, so its test trains once (marked slow)."""
    def register(fn: Target) -> Target:
        TARGETS[name], SHARES[name] = fn, share
        if needs_run:
            NEEDS_RUN.add(name)
        return fn
    return register


def cli_call(*argv: str) -> int:
    """`unetdist ARGV` in-process; its printed `error:` line comes back as a UserError (exit 2),
    after checking that it is the only line the command wrote to stderr."""
    from unetdist.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(argv))
    if rc == 2:
        lines = err.getvalue().splitlines()
        if len(lines) != 1 or not lines[0].startswith("error: "):
            raise AssertionError(f"exit 2 without one error line: {err.getvalue()!r}")
        raise UserError(lines[0][len("error: "):])
    return rc


def hostile_shards(case: Path, data: st.DataObject) -> tuple[Path, str]:
    """A copy of a sound shard folder with one shard's tar (or its bytes) edited, and the split
    that shard is in. The manifest is usually re-hashed to match, so readers get past the copy
    checks to the members."""
    folder = shardkit.copy_of(data.draw(st.sampled_from(shardkit.KINDS)), case / "shards")
    name = data.draw(st.sampled_from(shardkit.shard_names(folder)))
    tar = folder / name
    kind = data.draw(st.sampled_from(["members", "bytes", "meta"]))
    if kind == "bytes":
        tar.write_bytes(data.draw(mutate.edited_bytes(tar.read_bytes())))
    else:
        members = shardkit.read_members(tar)
        if kind == "meta":  # one sample's meta.json: case 6 (sizes) and JSON bombs
            metas = [i for i, (n, _) in enumerate(members) if n.endswith(".meta.json")]
            i = data.draw(st.sampled_from(metas))
            doc = json.loads(members[i][1])
            members[i] = (members[i][0], data.draw(mutate.hostile_meta(doc)))
        else:
            members = data.draw(mutate.edited_members(members))
        tar.write_bytes(shardkit.tar_bytes(members))
    split = shardkit.split_of(folder, name)
    if data.draw(st.sampled_from([True, True, True, False])):
        shardkit.refresh_entry(folder, name)
    return folder, split


def hostile_manifest(case: Path, data: st.DataObject) -> Path:
    """A copy of a sound shard folder whose manifest.json is edited (its shards are intact)."""
    folder = shardkit.copy_of(data.draw(st.sampled_from(shardkit.KINDS)), case / "shards")
    doc = shardkit.read_manifest_dict(folder)
    (folder / "manifest.json").write_bytes(data.draw(mutate.json_document(doc)))
    return folder


def data_config(data: st.DataObject):
    from unetdist.config import DataConfig

    return DataConfig(on_corrupt=data.draw(st.sampled_from(["error", "skip"])),
                      channels=data.draw(st.sampled_from(["green", "rgb"])), fold=-1)


@target("shard-verify")
def shard_verify(case: Path, data: st.DataObject) -> Callable[[], object]:
    if data.draw(st.booleans()):
        folder, _ = hostile_shards(case, data)
    else:
        folder = hostile_manifest(case, data)
    return lambda: cli_call("shard", "--verify", str(folder), "--quiet")


@target("manifest")
def manifest_loader(case: Path, data: st.DataObject) -> Callable[[], object]:
    from unetdist.data import manifest, reader

    folder = hostile_manifest(case, data)
    split = data.draw(st.sampled_from(["train", "val", "test", "bogus"]))
    fold = data.draw(st.sampled_from([-1, 0, 1, 5]))

    def call() -> None:
        m = manifest.read_manifest(folder)
        manifest.manifest_hash(m, fold)
        manifest.split_names(m, fold)
        reader.split_shards(str(folder), split, fold)
        manifest.shard_paths(folder, split, fold)
    return call


@target("eval-reader")
def eval_reader(case: Path, data: st.DataObject) -> Callable[[], object]:
    from unetdist.data.pipeline import eval_samples
    from unetdist.eval.evaluate import _original_size

    (folder, split), cfg = hostile_shards(case, data), data_config(data)

    def call() -> None:
        for s in eval_samples(cfg, str(folder), split, rank=0, world_size=1):
            # what evaluate resizes predictions to must be the image's own size
            assert _original_size(s) == s["rgb"].shape[:2], (_original_size(s), s["meta"])
    return call


@target("train-reader")
def train_reader(case: Path, data: st.DataObject) -> Callable[[], object]:
    from unetdist.data.reader import SampleCache, fill_cache, split_shards

    (folder, split), cfg = hostile_shards(case, data), data_config(data)
    return lambda: fill_cache(split_shards(str(folder), split), cfg, SampleCache())


@target("stage", share=0.25)  # fsyncs every copy: ~1 s a case
def stage_copy(case: Path, data: st.DataObject) -> Callable[[], object]:
    """Stage a hostile source, or re-stage over a previous copy whose files were edited."""
    from unetdist.data.stage.node import stage

    dst = case / "local"
    if data.draw(st.booleans()):
        src, _ = hostile_shards(case, data)
    else:
        src = shardkit.copy_of(data.draw(st.sampled_from(shardkit.KINDS)), case / "shards")
        stage(src, dst, progress=False)
        files = sorted(p for p in dst.rglob("*") if p.is_file())
        victim = data.draw(st.sampled_from(files))
        victim.write_bytes(data.draw(mutate.edited_bytes(victim.read_bytes()))
                           if data.draw(st.booleans()) else data.draw(mutate.raw_json()))
    rehash = ["--rehash"] if data.draw(st.booleans()) else []
    return lambda: cli_call("stage", str(src), str(dst), "--quiet", "--timeout", "5", *rehash)
