"""Several trained models as one: their vessel probabilities averaged (k-fold ensembles).

`evaluate`/`predict` with several `--checkpoint` values load each model once per process and
wrap them in an `Ensemble`; the sliding window then asks it for averaged probabilities tile by
tile (the Gaussian blending is linear, so this equals averaging the members' full maps).
Everything else, exactly-once scoring across ranks included, is the single-model path.

Members must see the same input: the preprocessing settings (channels, CLAHE, gamma,
normalisation, resize) of their stored configs must agree. The first checkpoint's config
supplies the evaluation settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from unetdist.config import RunConfig
from unetdist.errors import UserError
from unetdist.eval.inference import load_checkpoint

# what a model's input depends on: members that differ here would each need another input
INPUT_FIELDS = ("data.channels", "data.clahe", "data.gamma", "data.normalize", "data.resize",
                "data.scale", "eval.resize")


class Ensemble(nn.Module):
    """Averages its members' vessel probabilities (not logits: members may be calibrated
    differently, and a mean of probabilities is what nnU-Net's ensembles use)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)

    def vessel_prob(self, tiles: torch.Tensor, to_prob) -> torch.Tensor:
        """Mean of `to_prob(member(tiles))`: (B, 1, h, w) vessel probabilities, or (B, K, h, w)
        class probabilities of multi-class members (averaged after each member's softmax)."""
        total = None
        for m in self.members:
            p = to_prob(m(tiles))
            total = p if total is None else total + p
        return total / len(self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError("an Ensemble yields probabilities: use vessel_prob()")


def _get(cfg: RunConfig, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def check_same_input(paths: Sequence[str | Path], cfgs: Sequence[RunConfig]) -> None:
    for path, cfg in zip(paths[1:], cfgs[1:]):
        for f in INPUT_FIELDS:
            a, b = _get(cfgs[0], f), _get(cfg, f)
            if a != b:
                raise UserError(f"--checkpoint {path}: {f}={b!r} but {paths[0]} has {a!r}; an "
                                "ensemble's models must be trained on the same preprocessing")
        # binary members may mix 1 sigmoid and 2 softmax outputs (both give a vessel
        # probability); multi-class members must predict the same classes
        a, b = cfgs[0].model.num_classes, cfg.model.num_classes
        if a != b and max(a, b) > 2:
            raise UserError(f"--checkpoint {path}: model.num_classes={b} but {paths[0]} has "
                            f"{a}; an ensemble's models must predict the same classes")


def load_models(paths: Sequence[str | Path]) -> tuple[nn.Module, RunConfig, list[dict]]:
    """(model or Ensemble on CPU in eval mode, the first one's config, each one's metadata).

    Each checkpoint is read once; duplicates are refused (they would weigh a model twice).
    """

    resolved = [str(Path(p).resolve()) for p in paths]
    dup = next((p for i, p in enumerate(resolved) if p in resolved[:i]), None)
    if dup is not None:
        raise UserError(f"--checkpoint {dup} is given twice")
    loaded = [load_checkpoint(p) for p in paths]
    models, cfgs, metas = zip(*loaded)
    check_same_input(list(paths), list(cfgs))
    model = models[0] if len(models) == 1 else Ensemble(list(models)).eval()
    return model, cfgs[0], list(metas)
