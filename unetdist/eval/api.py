"""The Python API: a trained model in a notebook, on the `predict` command's code path.

    from unetdist import load_model
    model = load_model("runs/x/best")         # or an exported .safetensors file
    prob = model.predict("fundus.png")        # HxW float32 vessel probability, 0 outside the FOV
    mask = model.segment(image_array)         # HxW bool at the model's threshold

A multi-class model (e.g. artery/vein) gives KxHxW class probabilities from `predict` and an
HxW uint8 class-index map (the argmax, no threshold) from `segment`; `model.table` is its class
table (`model.table.colourize(mask)` paints the map in the table's colours), None when binary.
A multi-label model (e.g. disc and cup) gives CxHxW label probabilities from `predict` and a
CxHxW bool mask per label from `segment`, each label at its own threshold (`model.thresholds`).

`load_model` is `predict`'s own loading (`predict.load_predictor`) and `predict`/`segment` call
`predict.predict_image`, the function `unetdist predict` runs per image: the same
preprocessing, data/eval scale, whole-image or sliding window, TTA and threshold (eval.threshold,
under `auto` the one chosen on validation at training time), so the two cannot drift. No config
file, no accelerate launch; CPU or CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from unetdist.config import RunConfig
from unetdist.data.classes import ClassTable
from unetdist.errors import DataError
from unetdist.eval.image_files import read_image, read_mask
from unetdist.eval.inference import inference_policy
from unetdist.eval.predict import default_fov, head_kind, load_predictor, predict_image
from unetdist.eval.threshold import fixed_threshold

ImageLike = str | Path | np.ndarray


def _rgb(image: ImageLike) -> np.ndarray:
    """(H, W, 3) uint8 from a path or an array (HxWx3 uint8, or HxW gray)."""
    if isinstance(image, (str, Path)):
        return read_image(Path(image))
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise DataError(f"image must be an HxWx3 uint8 array (or a path), got {a.dtype} "
                        f"{a.shape}")
    return a


def _fov(fov: ImageLike | None, rgb: np.ndarray) -> np.ndarray:
    if fov is None:
        return default_fov(rgb)
    m = read_mask(Path(fov)) if isinstance(fov, (str, Path)) else np.asarray(fov) > 0
    if m.shape != rgb.shape[:2]:
        raise DataError(f"FOV mask is {m.shape[1]}x{m.shape[0]}, image {rgb.shape[1]}x"
                        f"{rgb.shape[0]}")
    return m


class Model:
    """A trained model ready for inference; build it with `load_model`."""

    def __init__(self, network: nn.Module, cfg: RunConfig, table: ClassTable | None = None,
                 thresholds: Sequence[float] = ()) -> None:
        self.network, self.cfg, self.table = network, cfg, table
        self.thresholds = list(thresholds)  # a multi-label model's, one per label
        self.policy = inference_policy(network, precision=cfg.train.precision)

    @property
    def threshold(self) -> float:
        """The probability threshold `segment` uses."""
        return fixed_threshold(self.cfg.eval)

    @property
    def device(self):
        return self.policy.device

    def predict(self, image: ImageLike, fov: ImageLike | None = None) -> np.ndarray:
        """(H, W) float32 vessel probability of an HxWx3 uint8 RGB array or image file, zero
        outside the FOV (FOV: a mask array or file, else estimated as `predict` does); a
        multi-class model: (K, H, W) class probabilities, background outside the FOV; a
        multi-label model: (C, H, W) label probabilities, zero outside the FOV."""
        rgb = _rgb(image)
        return predict_image(self.network, rgb, _fov(fov, rgb), self.cfg, self.policy,
                             **head_kind(self.table))

    def segment(self, image: ImageLike, fov: ImageLike | None = None) -> np.ndarray:
        """(H, W) bool vessel mask: `predict` at the model's threshold; a multi-class model:
        (H, W) uint8 class indices, the argmax of the probabilities; a multi-label model:
        (C, H, W) bool, each label at its threshold."""
        prob = self.predict(image, fov)
        if self.table is not None and self.table.is_multilabel:
            return prob >= np.asarray(self.thresholds, np.float32).reshape(-1, 1, 1)
        if self.table is not None:
            return prob.argmax(0).astype(np.uint8)
        return prob >= self.threshold

    def __repr__(self) -> str:
        return (f"Model({self.cfg.model.name}, width {self.cfg.model.width}, "
                f"device {self.device}, threshold {self.threshold:g})")


def load_model(checkpoint: str | Path | Sequence[str | Path], device: str = "auto",
               overrides: Sequence[str] = ()) -> Model:
    """The model of a best/ folder, run folder or exported .safetensors file (several: an
    ensemble) on DEVICE (auto: CUDA when present, else CPU); `overrides` are `eval.key=value`
    settings as on the command line (e.g. ["eval.tta=flip"])."""
    paths = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    network, cfg, table, thresholds = load_predictor(paths, device, overrides)
    return Model(network, cfg, table, thresholds)
