"""Helpers for the evaluation/predict/export tests: a tiny best/ folder and synthetic samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

TINY = ["model.width=8", "model.depth=3", "eval.tile=48", "eval.overlap=0.25",
        "eval.batch_size=3", "eval.auc_bins=2000", "eval.num_overlays=2"]


def tiny_config(*overrides: str):
    from unetdist.config import load_config

    return load_config(None, [*TINY, *overrides])


def tiny_model(cfg, seed: int = 0) -> torch.nn.Module:
    """A width-8 UNet with random weights and non-trivial BatchNorm statistics."""
    from unetdist.models.registry import build_model

    torch.manual_seed(seed)
    model = build_model(cfg.model)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def make_best_dir(path: Path, cfg=None, seed: int = 0, step: int = 7) -> Path:
    """A best/ folder per the contract: model.safetensors (config in metadata) + yaml + json."""
    from unetdist.config import to_dict, to_yaml
    from unetdist.models.weights import save_weights

    cfg = cfg or tiny_config()
    path.mkdir(parents=True, exist_ok=True)
    meta = {"format": "unetdist-1", "config": json.dumps(to_dict(cfg)), "step": str(step)}
    save_weights(tiny_model(cfg, seed), path / "model.safetensors", meta)
    (path / "config.yaml").write_text(to_yaml(cfg))
    (path / "metrics.json").write_text(json.dumps({"step": step}))
    return path


def random_sample(key: str, h: int, w: int, seed: int, channels: int = 1,
                  label2: bool = False) -> dict:
    """A sample shaped like eval_samples' output (already 'preprocessed' random noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    fov = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.48 * min(h, w)) ** 2).astype(np.float32)
    label = (rng.random((h, w)) < 0.2).astype(np.float32)
    s = {"key": key, "image": torch.from_numpy(rng.normal(size=(1, channels, h, w))
                                                .astype(np.float32)),
         "label": torch.from_numpy(label)[None, None], "fov": torch.from_numpy(fov)[None, None],
         "rgb": rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
         "meta": {"id": key, "height": h, "width": w}}
    if label2:
        s["label2"] = torch.from_numpy((rng.random((h, w)) < 0.2).astype(np.float32))[None, None]
    return s
