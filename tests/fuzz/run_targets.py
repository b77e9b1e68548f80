"""Fuzz targets on run folders: a copy of the session's tiny run with one file made hostile
(trainer_state.json, scheduler.json, latest, metrics.jsonl, config.yaml, best/metrics.json, or
a weights file's safetensors header), fed to resume planning and loading, report and evaluate.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from functools import cache
from pathlib import Path

from hypothesis import strategies as st

from tests.fuzz import mutate, runkit
from tests.fuzz.targets import cli_call, target

LATEST_NAMES = [b"step-000002\n", b"step-999999\n", b"../../../etc\n", b"", b"\x00",
                b"step-000002\n" * 5000, b"/tmp\n", b"step--1\n"]


def _replace_special(f: Path, data: st.DataObject) -> None:
    """F replaced by something that is not its regular file: gone, a folder, a FIFO, a link."""
    kind = data.draw(st.sampled_from(["missing", "folder", "fifo", "dev-zero", "link-out"]))
    if f.is_dir():
        return
    f.unlink(missing_ok=True)
    if kind == "folder":
        f.mkdir()
    elif kind == "fifo":
        os.mkfifo(f)
    elif kind == "dev-zero":
        f.symlink_to("/dev/zero")
    elif kind == "link-out":
        f.symlink_to("/etc/hostname")


def _hostile_content(f: Path, data: st.DataObject) -> bytes:
    raw = f.read_bytes()
    if f.name == "latest":
        return data.draw(st.sampled_from(LATEST_NAMES) | mutate.edited_bytes(raw))
    if f.suffix == ".yaml":
        import yaml

        return data.draw(mutate.yaml_document(yaml.safe_load(raw)))
    if f.suffix == ".jsonl":
        lines = raw.splitlines()
        if data.draw(st.booleans()) or not lines:
            return data.draw(mutate.edited_bytes(raw))
        i = data.draw(st.integers(0, len(lines) - 1))
        lines[i] = data.draw(mutate.json_document(json.loads(lines[i]))).replace(b"\n", b" ")
        return b"\n".join(lines) + b"\n"
    return data.draw(mutate.json_document(json.loads(raw)))


def hostile_run(case: Path, data: st.DataObject) -> Path:
    """A copy of the tiny run with one of its parsed files made hostile."""
    run = runkit.copy_run(case / "run")
    f = run / data.draw(st.sampled_from(runkit.RUN_FILES))
    if data.draw(st.sampled_from([False] * 7 + [True])):
        _replace_special(f, data)
    else:
        f.write_bytes(_hostile_content(f, data))
    return run


@cache
def _resume_inputs():
    """The seed run's config and dataset hash, as `train` computes them (run_dir aside)."""
    from unetdist.config import load_config
    from unetdist.data.manifest import manifest_hash, read_manifest

    cfg = load_config(None, runkit.train_overrides(runkit.shards()))
    return cfg, manifest_hash(read_manifest(runkit.shards()), cfg.data.fold)


class _OneProcess:
    is_main_process, num_processes, process_index = True, 1, 0


def _json_parts() -> list:
    """Fresh copies of the JSON checkpoint parts `train.setup.checkpoint_parts` lists."""
    import torch

    from unetdist.train.budget import TimeBudget
    from unetdist.train.checkpoint import RunIdentity, TrainState
    from unetdist.train.optim import SchedulerState

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return [TrainState(), RunIdentity("", 1, {}), TimeBudget(0, 2, True), SchedulerState(sched)]


@target("run-resume", needs_run=True)
def run_resume(case: Path, data: st.DataObject) -> Callable[[], object]:
    """What `train` reads of a run folder before it builds anything, then its JSON parts."""
    from unetdist.train.checkpoint import load_json_parts
    from unetdist.train.resume import plan_resume

    run = hostile_run(case, data)

    def call() -> None:
        cfg, mhash = _resume_inputs()
        path = plan_resume(cfg, _OneProcess(), run, mhash)
        if path is not None:
            load_json_parts(path, _json_parts())
    return call


@target("run-report", share=0.1, needs_run=True)  # matplotlib: ~5 s a case
def run_report(case: Path, data: st.DataObject) -> Callable[[], object]:
    run = hostile_run(case, data)
    return lambda: cli_call("report", str(run))


def _checkpoint_arg(run: Path, data: st.DataObject) -> str:
    return str(run / data.draw(st.sampled_from(["", "best", "checkpoints/latest", runkit.STEP])))


@target("run-evaluate", share=0.25, needs_run=True)  # ~1 s a case
def run_evaluate(case: Path, data: st.DataObject) -> Callable[[], object]:
    run = hostile_run(case, data)
    ck = _checkpoint_arg(run, data)
    return lambda: cli_call("evaluate", "--checkpoint", ck, "--data", str(runkit.shards()),
                            "--out", str(case / "eval"), "--quiet", "eval.tile=64")


def hostile_safetensors(raw: bytes, data: st.DataObject) -> bytes:
    """A safetensors file with its length prefix, JSON header or stored config edited."""
    (n,) = struct.unpack("<Q", raw[:8])
    header, body = json.loads(raw[8:8 + n]), raw[8 + n:]
    kind = data.draw(st.sampled_from(["length", "header", "config", "config", "bytes"]))
    if kind == "length":
        n2 = data.draw(st.sampled_from([0, 1, n - 1, n + 1, len(raw), 2**31, 2**63, 2**64 - 1]))
        return struct.pack("<Q", n2) + raw[8:]
    if kind == "bytes":
        return data.draw(mutate.edited_bytes(raw))
    if kind == "config" and "config" in header.get("__metadata__", {}):
        config = json.loads(header["__metadata__"]["config"])
        header["__metadata__"]["config"] = data.draw(mutate.json_document(config)).decode(
            "utf-8", "replace")
        text = json.dumps(header).encode()
    else:
        text = data.draw(mutate.json_document(header))
    return struct.pack("<Q", len(text)) + text + body


@target("safetensors", needs_run=True)
def safetensors_header(case: Path, data: st.DataObject) -> Callable[[], object]:
    """A hostile best/model.safetensors, checkpoint weights or exported file, fed to the
    loaders and to evaluate, predict and export."""
    from unetdist.eval.inference import load_checkpoint, read_checkpoint

    run = runkit.copy_run(case / "run")
    where = data.draw(st.sampled_from(["best", runkit.STEP, "exported"]))
    f = case / "model.safetensors" if where == "exported" else run / where / "model.safetensors"
    if where == "exported":
        f.write_bytes(runkit.exported().read_bytes())
    f.write_bytes(hostile_safetensors(f.read_bytes(), data))
    ck = str(f if where == "exported" else f.parent)
    images = runkit.shards().parent / "raw" / "test" / "images"
    how = data.draw(st.sampled_from(["read", "load", "evaluate", "predict", "export"]))
    calls = {
        "read": lambda: read_checkpoint(ck), "load": lambda: load_checkpoint(ck),
        "evaluate": lambda: cli_call("evaluate", "--checkpoint", ck, "--data",
                                     str(runkit.shards()), "--out", str(case / "eval"),
                                     "--quiet", "eval.tile=64"),
        "predict": lambda: cli_call("predict", "--checkpoint", ck, "--images", str(images),
                                    "--out", str(case / "pred"), "--quiet", "eval.tile=64"),
        "export": lambda: cli_call("export", "--checkpoint", ck, "--format", "safetensors",
                                   "--out", str(case / "out.safetensors")),
    }
    return calls[how]
