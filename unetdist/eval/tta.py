"""Test-time augmentation views and their inverses (`eval.tta`).

- `none`: the image as is.
- `flip`: identity, horizontal, vertical and both flips (4 views); `eval.tta=true` in older
  configs means this, so their results do not change.
- `dihedral`: the 8 symmetries of the square: 4 rotations by 90 degrees, each with and
  without a horizontal flip. Retinal vessels have no preferred orientation, so every view is
  as plausible as the original.

A view maps an (N, C, H, W) image to another image (H and W swap under odd rotations, which
the sliding window handles); its inverse maps the view's prediction back onto the original
pixel grid, so view predictions can be averaged pixel by pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("none", "flip", "dihedral")
_ALIASES = {True: "flip", False: "none", "true": "flip", "false": "none", "yes": "flip",
            "no": "none", "1": "flip", "0": "none"}


def tta_mode(value: object) -> str:
    """The mode a config value names (bools and their spellings are the old on/off switch)."""
    if isinstance(value, str):
        key = value.strip().lower()
        return _ALIASES.get(key, key)
    return _ALIASES.get(value, str(value)) if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class View:
    """Flip `dims` first, then rotate by `k` quarter turns (counter-clockwise) in (H, W)."""

    dims: tuple[int, ...] = ()
    k: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims:
            x = x.flip(self.dims)
        return torch.rot90(x, self.k, dims=(-2, -1)) if self.k else x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.k:
            y = torch.rot90(y, -self.k, dims=(-2, -1))
        return y.flip(self.dims) if self.dims else y


def views(mode: object) -> tuple[View, ...]:
    m = tta_mode(mode)
    if m == "none":
        return (View(),)
    if m == "flip":
        return tuple(View(d) for d in ((), (-1,), (-2,), (-2, -1)))
    if m == "dihedral":
        return tuple(View(d, k) for d in ((), (-1,)) for k in range(4))
    raise ValueError(f"eval.tta must be one of {'|'.join(MODES)}, got {mode!r}")
