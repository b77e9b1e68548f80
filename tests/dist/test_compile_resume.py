"""model.compile is a runtime switch: checkpoints never depend on it (2-process DDP, gloo).

The model is compiled after `prepare()` (the DDP module is what torch.compile wraps), so
accelerate saves the eager module's keys whatever the switch says; older checkpoints written
from DDP(compiled model) carry `module._orig_mod.` and must load too. The eager compile
backend (model.compile_backend=eager) runs the captured graph with the same kernels, so the
runs can be compared bitwise; inductor would take minutes to compile on 2 shared cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tests.util import launch, subprocess_env, synthetic_shards

pytestmark = [pytest.mark.dist, pytest.mark.slow]


def _args(shards: Path, run_dir: Path, steps: int, compile_: bool) -> list[str]:
    return ["train", f"data.shared_dir={shards}", f"train.run_dir={run_dir}", "model.width=8",
            "model.depth=2", "data.channels=gray", "data.crop=48", "data.batch_size=2",
            "data.num_workers=0", "data.steps_per_epoch=3", f"train.max_steps={steps}",
            "train.eval_every=0", "checkpoint.every_steps=2", "optim.lr=0.02",
            f"model.compile={str(compile_).lower()}", "model.compile_backend=eager",
            "eval.tile=64", "eval.batch_size=1", "train.progress=false",
            "track.wandb.mode=disabled"]


def _train(shards: Path, run_dir: Path, steps: int, compile_: bool) -> None:
    r = launch(_args(shards, run_dir, steps, compile_), env=subprocess_env(), timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]


def _weights(run_dir: Path, step: int) -> dict:
    return load_file(run_dir / "checkpoints" / f"step-{step:06d}" / "model.safetensors")


def _equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(a[k].equal(b[k]) for k in a)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return synthetic_shards(tmp_path_factory.mktemp("compile-data"), n_train=6,
                            seed=5, split_val=0.0)


def test_resume_across_a_compile_toggle_and_from_old_compiled_keys(shards, tmp_path):
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    _train(shards, eager, 4, compile_=False)
    _train(shards, compiled, 4, compile_=True)
    # the checkpoint does not depend on the switch: same keys (no `_orig_mod.`), same weights
    step4 = _weights(eager, 4)
    assert _equal(step4, _weights(compiled, 4))
    assert not any("_orig_mod" in k for k in _weights(compiled, 4))
    # the compiled run's checkpoint as the old code wrote it (compiled before DDP; accelerate
    # unwrapped DDP but kept the compiled wrapper): keys `_orig_mod.*`. Its resume with the
    # switch off is the toggle off too: the file held the eager run's keys and weights above.
    path = compiled / "checkpoints" / "step-000004" / "model.safetensors"
    save_file({"_orig_mod." + k: v for k, v in load_file(path).items()}, path)
    _train(shards, eager, 8, compile_=True)  # toggled on
    _train(shards, compiled, 8, compile_=False)  # toggled off, from the old keys
    final = _weights(eager, 8)
    assert _equal(final, _weights(compiled, 8))
    assert not _equal(final, step4)  # training went on after the resume
