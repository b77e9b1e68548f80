"""`model.name=smp`: any segmentation_models_pytorch architecture on any of its encoders.

`model.arch` picks the architecture (Unet, UnetPlusPlus, FPN, DeepLabV3Plus, Segformer, ...)
and `model.encoder` the encoder, including timm's through smp's `tu-` prefix (`tu-resnet18`,
`tu-convnext_tiny`). segmentation_models_pytorch is an optional extra
(`pip install 'unetdist[smp]'`), imported only when this model is built.

Nothing is downloaded: the network is built with `encoder_weights=None` and pretrained encoder
weights come only from `model.pretrained_path`, a local safetensors/PyTorch file holding the
encoder's state dict (smp's own encoder keys, or a timm model's keys for a `tu-` encoder).
Inputs are padded to a multiple of the encoder's output stride and the logits cropped back,
so training crops and sliding-window tiles of any size work.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from unetdist.errors import ConfigError, UserError
from unetdist.models.layers import pad_to_multiple
from unetdist.models.weights import read_state_dict

MIN_LOADED_FRACTION = 0.5  # below this share of the encoder's tensors loaded, loading failed


def _smp():
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise ConfigError("model.name=smp needs segmentation_models_pytorch: pip install "
                          "'unetdist[smp]'") from None
    return smp


def architectures() -> tuple[str, ...]:
    """The architecture names smp offers (lower case; model.arch is matched without case)."""
    return tuple(_smp().MODEL_ARCHITECTURES_MAPPING)


def check_arch(arch: str) -> None:
    if arch.lower() not in architectures():
        raise ConfigError(f"model.arch must be one of {'|'.join(architectures())} "
                          f"(case-insensitive), got {arch!r}")


class SmpModel(nn.Module):
    """An smp network with padding to its output stride; forward -> logits at input size."""

    def __init__(self, arch: str, encoder: str, in_channels: int, num_classes: int) -> None:
        super().__init__()
        smp = _smp()
        check_arch(arch)
        try:
            self.net = smp.create_model(arch.lower(), encoder_name=encoder, encoder_weights=None,
                                        in_channels=in_channels, classes=num_classes)
        except (KeyError, ValueError, RuntimeError) as e:
            raise ConfigError(f"model.encoder {encoder!r} does not build with model.arch="
                              f"{arch}: {str(e).splitlines()[0][:200]}") from None
        self.stride = int(getattr(self.net.encoder, "output_stride", 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = pad_to_multiple(x, self.stride)
        return self.net(x)[..., :h, :w]


def _encoder_state(path: str) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"model.pretrained_path: weights file not found: {path}")
    return read_state_dict(p)


def load_encoder(model: SmpModel, path: str) -> int:
    """Load encoder weights from a local file; returns the number of tensors loaded.

    Accepts the encoder's own keys or a timm model's keys (smp's `tu-` encoders keep the timm
    model under `model.`); tensors whose shape differs (a classifier, a first conv with other
    input channels) are skipped, and too few matches is an error, not a silent random start.
    """
    sd = _encoder_state(path)
    target = model.net.encoder.state_dict()
    best = {}
    for prefix in ("", "model.", "encoder."):
        cand = {prefix + k: v for k, v in sd.items()}
        if prefix == "encoder.":  # a whole smp model's state dict
            cand = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
        fit = {k: v for k, v in cand.items() if k in target and v.shape == target[k].shape}
        best = fit if len(fit) > len(best) else best
    if len(best) < MIN_LOADED_FRACTION * len(target):
        raise UserError(f"model.pretrained_path: {path} matches only {len(best)} of the "
                        f"{len(target)} tensors of encoder {type(model.net.encoder).__name__}: "
                        "not weights for this model.encoder")
    model.net.encoder.load_state_dict(best, strict=False)
    return len(best)
