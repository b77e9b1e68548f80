"""Every shipped experiment YAML loads, validates and builds; the DRIVE recipes carry the
literature's knobs and differ from each other only in the model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.util import REPO
from unetdist.config import load_config, to_dict

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_the_expected_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"demo", "seed_recipe", "drive_unet", "drive_timm"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_validates_and_builds(path):
    from unetdist.models.registry import build_model

    cfg = load_config(path)
    assert cfg.train.run_dir == f"runs/{path.stem}"
    model = build_model(cfg.model, pretrained=False).eval()
    size = 64 if cfg.model.name == "unet" else 96
    with torch.no_grad():
        out = model(torch.zeros(1, cfg.model.in_channels, size, size))
    assert out.shape == (1, cfg.model.num_classes, size, size)


@pytest.mark.parametrize("stem", ["drive_unet", "drive_timm"])
def test_drive_recipes_have_the_literature_knobs(stem):
    cfg = load_config(REPO / "configs" / f"{stem}.yaml")
    d, a = cfg.data, cfg.data.aug
    assert d.channels in ("green", "rgb") and d.clahe and d.gamma != 1.0
    assert d.crop > 0 and d.resize == 0 and d.shared_dir and d.local_dir and d.stage
    assert a.enabled and a.hflip > 0 and a.vflip > 0 and a.rot90 and a.rotate_deg > 0
    assert a.scale > 0 and a.elastic > 0 and a.brightness > 0 and a.contrast > 0
    assert cfg.loss.name == "bce_dice"
    assert cfg.optim.name == "adamw" and cfg.optim.schedule == "cosine"
    assert 0 < cfg.optim.warmup_steps < cfg.train.max_steps
    assert cfg.eval.split == "val" and cfg.eval.tta
    assert 0 < cfg.train.eval_every <= cfg.train.max_steps
    assert cfg.train.precision == "bf16" and cfg.train.resume == "auto"
    assert cfg.track.wandb.mode == "auto"


def test_drive_timm_is_drive_unet_with_a_timm_encoder():
    unet = to_dict(load_config(REPO / "configs" / "drive_unet.yaml"))
    timm = to_dict(load_config(REPO / "configs" / "drive_timm.yaml"))
    assert timm["model"]["name"] == "timm_unet" and timm["model"]["encoder"] == "resnet34"
    assert timm["model"]["pretrained_path"] is None  # a local file, set by the user
    for cfg in (unet, timm):
        cfg.pop("model")
        cfg["optim"].pop("lr")
        cfg["train"].pop("run_dir")
        cfg["track"]["wandb"].pop("tags")
    assert unet == timm


def test_drive_cpu_is_drive_unet_scaled_down_on_a_time_budget():
    cpu = load_config(REPO / "configs" / "drive_cpu.yaml")
    assert cpu.train.max_minutes == 10.0 and cpu.optim.schedule_by == "time"
    assert cpu.train.precision == "auto"  # bf16 where the CPU has it, resolved at start
    assert cpu.model.width == 16 and cpu.data.crop == 128 and cpu.optim.lr == 2e-3
    assert cpu.optim.warmup_steps == 50 and cpu.train.max_steps > 5000  # time ends the run
    unet = load_config(REPO / "configs" / "drive_unet.yaml")
    assert cpu.data.aug == unet.data.aug and cpu.loss == unet.loss and cpu.eval == unet.eval


def test_demo_config_stays_small_and_offline():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.track.wandb.mode == "disabled" and cfg.train.precision == "no"
    assert cfg.data.shared_dir is None and cfg.data.local_dir is None  # set by `unetdist demo`
    assert cfg.model.width <= 32 and cfg.data.crop <= 128 and cfg.train.max_steps <= 500


def test_every_key_in_the_drive_recipes_is_explained():
    """Each leaf setting of the DRIVE recipes that differs from the default carries a comment
    (on its line, or the comment block right above it)."""
    from unetdist.config import RunConfig

    defaults = _flatten(dataclasses.asdict(RunConfig()))
    for stem in ("drive_unet", "drive_timm", "drive_cpu"):
        lines = (REPO / "configs" / f"{stem}.yaml").read_text().splitlines()
        values = _flatten(to_dict(load_config(REPO / "configs" / f"{stem}.yaml")))
        changed = {k.rsplit(".", 1)[-1] for k, v in values.items()
                   if defaults.get(k) != v and k != "train.run_dir"}
        for i, line in enumerate(lines):
            key = line.split(":", 1)[0].strip()
            if key in changed and line.startswith(" ") and not line.rstrip().endswith(":"):
                assert "#" in line or lines[i - 1].lstrip().startswith("#"), \
                    f"{stem}.yaml line {i + 1} has no comment: {line!r}"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
