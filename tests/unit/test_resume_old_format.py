"""A checkpoint in the format every earlier unetdist wrote resumes bitwise under today's code.

`write_checkpoint_v1` is a frozen copy of how the trainer wrote a checkpoint before the
stateful-parts list (main at 2a12aad: `train/loop.py` `save` + `train/checkpoint.py`
`save_checkpoint` + `ModelEma.save`): it must not call today's checkpoint code, so a change of
file names or keys that breaks old runs fails here. The fixture is generated, not committed.
Both trainings run in this process (fit() on the CPU).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.util import synthetic_shards
from unetdist.config import load_config, to_dict

pytestmark = pytest.mark.slow


class Stop(Exception):
    """Ends the first training right after its old-format checkpoint: a kill, in-process."""


def write_checkpoint_v1(run) -> Path:
    """The checkpoint of this step exactly as the trainer wrote it before (frozen)."""
    from safetensors.torch import save_file

    acc, st, cfg = run.acc, run.state, run.cfg
    ckdir = Path(run.run_dir) / "checkpoints"
    name = f"step-{st.step:06d}"
    tmp, final = ckdir / f".tmp-{name}", ckdir / name
    tmp.mkdir(parents=True)
    acc.save_state(str(tmp))
    epoch, pos = divmod(st.batches, cfg.data.steps_per_epoch)
    state = {"step": st.step, "epoch": epoch,
             "stream": {"epoch": epoch, "position": pos, "batches": st.batches},
             "best": {"metric": "val fov dice", "value": st.best_dice, "step": st.best_step},
             "skipped_in_a_row": st.skipped_in_a_row, "tracker_run_id": st.run_id,
             "manifest_hash": run.manifest_hash, "world_size": acc.num_processes,
             "config": to_dict(cfg),
             "budget": {"spent_s": run.budget._own_s, "max_minutes": run.budget.limit_s / 60}}
    sched = {k: v for k, v in run.scheduler.state_dict().items() if k != "lr_lambdas"}
    (tmp / "scheduler.json").write_text(json.dumps(sched, indent=1))
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    ema = run.ema
    meta = json.dumps({"decay": ema.decay, "updates": ema.updates}, sort_keys=True)
    save_file({k: v.detach().clone().contiguous() for k, v in ema.module.state_dict().items()},
              str(tmp / "ema.safetensors"), metadata={"ema": meta})
    os.rename(tmp, final)
    (ckdir / "latest").write_text(name + "\n")
    run.last_saved_step = st.step
    return final


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return synthetic_shards(tmp_path_factory.mktemp("old-format"), n_train=6, seed=11,
                            split_val=0.34)


def _cfg(shards: Path, run_dir: Path):
    return load_config(None, [
        f"data.local_dir={shards}", "data.stage=false", f"train.run_dir={run_dir}",
        "model.width=8", "model.depth=2", "data.channels=gray", "data.crop=32",
        "data.batch_size=2", "data.num_workers=0", "train.max_steps=4", "train.eval_every=2",
        "checkpoint.every_steps=2", "train.ema_decay=0.9", "train.progress=false",
        "track.wandb.mode=disabled", "eval.tile=64"])


def _fit(cfg):
    from unetdist.distributed import forget_accelerator_state
    from unetdist.train.loop import fit

    forget_accelerator_state()
    try:
        return fit(cfg)
    finally:
        forget_accelerator_state()


def _weights(folder: Path, file: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / file))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_in_the_previous_format_resumes_bitwise(shards, tmp_path, monkeypatch):
    from unetdist.train import loop

    whole = _fit(_cfg(shards, tmp_path / "whole"))
    assert whole.step == 4

    real_save = loop.save

    def save_v1_then_stop(run):
        write_checkpoint_v1(run)
        raise Stop

    monkeypatch.setattr(loop, "save", save_v1_then_stop)
    with pytest.raises(Stop):
        _fit(_cfg(shards, tmp_path / "cut"))
    monkeypatch.setattr(loop, "save", real_save)
    old = tmp_path / "cut" / "checkpoints" / "step-000002"
    new = tmp_path / "whole" / "checkpoints" / "step-000002"
    # today's writer still writes the same files and keys as the frozen one
    assert sorted(p.name for p in old.iterdir()) == sorted(p.name for p in new.iterdir())
    old_state, new_state = (json.loads((d / "trainer_state.json").read_text())
                            for d in (old, new))
    for s in (old_state, new_state):  # seconds, tracker ids and paths differ per run
        s["budget"].pop("spent_s"), s.pop("tracker_run_id")
        s["config"]["train"].pop("run_dir")
    # one key was added since (the thread count the run settled on); a checkpoint without it
    # loads as one that had not settled yet, which the resume below goes through
    assert set(new_state.pop("threads")) == {"threads", "settled"}
    assert old_state == new_state
    assert (old / "scheduler.json").read_text() == (new / "scheduler.json").read_text()

    resumed = _fit(_cfg(shards, tmp_path / "cut"))
    assert resumed.step == 4
    end_whole = tmp_path / "whole" / "checkpoints" / "step-000004"
    end_cut = tmp_path / "cut" / "checkpoints" / "step-000004"
    assert _same(_weights(end_whole, "model.safetensors"), _weights(end_cut, "model.safetensors"))
    assert _same(_weights(end_whole, "ema.safetensors"), _weights(end_cut, "ema.safetensors"))
    assert (json.loads((end_cut / "trainer_state.json").read_text())["best"]
            == json.loads((end_whole / "trainer_state.json").read_text())["best"])
    shutil.rmtree(tmp_path / "whole")  # the runs are large next to the test's other files
