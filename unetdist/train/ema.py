"""An exponential moving average of the model's weights (`train.ema_decay`).

After every optimizer step: ema = d * ema + (1 - d) * weights, with the decay warmed up as
d_t = min(decay, (1 + t) / (10 + t)) so the early average is not dominated by the random
initial weights (the TensorFlow ExponentialMovingAverage rule, as timm's `ModelEmaV3` offers).
Buffers (BatchNorm running statistics) are copied, not averaged: they are already averages.

Every rank updates its own copy from identical DDP weights, so the copies stay equal and no
collective is needed; only BatchNorm buffers differ per rank and are broadcast before a
validation, as for the raw model. The state is plain tensors saved as safetensors beside
accelerate's files in each checkpoint (never in a pickle), so a resume restores it bitwise.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from unetdist.models.weights import load_weights, save_weights

EMA_FILE = "ema.safetensors"


class ModelEma:
    """An averaged copy of a module, updated in place after each optimizer step.

    A checkpoint part that writes its own file (`save`/`load`): ema.safetensors.
    """

    name, missing = "EMA weights", "the EMA starts from the resumed weights"

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0  # steps averaged so far: drives the decay warm-up

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_p = [p for p in self.module.parameters()]
        new_p = [p.detach() for p in model.parameters()]
        floats = [(e, n) for e, n in zip(ema_p, new_p) if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [n.to(e.dtype) for e, n in floats],
                                 1.0 - d)
        for e, n in zip(self.module.buffers(), model.buffers()):
            e.copy_(n)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def save(self, folder: str | Path) -> Path:
        # one metadata key: safetensors writes several in a per-process random order, and a
        # resumed run's checkpoint should be byte-identical to the uninterrupted run's
        meta = json.dumps({"decay": self.decay, "updates": self.updates}, sort_keys=True)
        return save_weights(self.state_dict(), Path(folder) / EMA_FILE, {"ema": meta})

    def load(self, folder: str | Path) -> bool:
        """Restore the state a checkpoint folder holds; False when it has none."""

        path = Path(folder) / EMA_FILE
        if not path.is_file():
            return False
        state, meta = load_weights(path)
        self.module.load_state_dict(state, strict=True)
        self.updates = int(json.loads(meta["ema"])["updates"])
        return True
