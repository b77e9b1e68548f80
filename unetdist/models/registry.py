"""Model registry: `build_model(cfg.model)` by name, and the runtime switches.

One small builder per variant. Architecture fields (name, width, depth, ...) decide the weights'
shapes; runtime switches (channels_last, compile, sync_bn) are applied afterwards by
`apply_runtime_options` and never change the state dict's keys once cleaned
(see `unetdist.models.weights.clean_state_dict`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from unetdist.errors import ConfigError, UserError
from unetdist.models.smp_unet import SmpModel, load_encoder
from unetdist.models.timm_unet import TimmUNet
from unetdist.models.unet import UNet
from unetdist.models.weights import read_state_dict

if TYPE_CHECKING:  # the registry owns names the config asks for: typing only, no circle
    from unetdist.config import ModelConfig


def _in_channels(cfg: ModelConfig) -> int:
    if cfg.in_channels < 1:
        # RunConfig fills it from data.channels; a bare ModelConfig must set it
        raise ConfigError(f"model.in_channels must be >= 1 when the model is built alone "
                          f"(RunConfig derives it from data.channels), got {cfg.in_channels}")
    return cfg.in_channels


def _build_unet(cfg: ModelConfig, pretrained: bool) -> nn.Module:
    model = UNet(_in_channels(cfg), cfg.num_classes, cfg.bilinear, width=cfg.width,
                 depth=cfg.depth, norm=cfg.norm, dropout=cfg.dropout)
    if pretrained and cfg.pretrained_path:
        _load_whole_model(model, cfg.pretrained_path)
    return model


def _load_whole_model(model: nn.Module, path: str) -> None:
    """Start from a full checkpoint (e.g. the seed tutorial's `checkpoint_epoch*.pth`)."""

    if not Path(path).expanduser().is_file():
        raise UserError(f"model.pretrained_path: weights file not found: {path}")
    sd = read_state_dict(Path(path).expanduser())
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise UserError(f"model.pretrained_path: {path} does not fit this model (check "
                        f"model.width/depth/bilinear/in_channels): {' '.join(lines[:2])[:300]}"
                        ) from None


def _build_timm_unet(cfg: ModelConfig, pretrained: bool) -> nn.Module:
    return TimmUNet(cfg.encoder, _in_channels(cfg), cfg.num_classes,
                    decoder_width=cfg.decoder_width, levels=cfg.encoder_levels, norm=cfg.norm,
                    dropout=cfg.dropout,
                    pretrained_path=cfg.pretrained_path if pretrained else None)


def _build_smp(cfg: ModelConfig, pretrained: bool) -> nn.Module:
    model = SmpModel(cfg.arch, cfg.encoder, _in_channels(cfg), cfg.num_classes)
    if pretrained and cfg.pretrained_path:
        load_encoder(model, cfg.pretrained_path)
    return model


# builder(cfg, pretrained): `pretrained` says whether to read model.pretrained_path
MODELS: dict[str, Callable[[ModelConfig, bool], nn.Module]] = {
    "unet": _build_unet,
    "timm_unet": _build_timm_unet,
    "smp": _build_smp,  # segmentation_models_pytorch (optional extra `smp`)
}


def build_model(cfg: ModelConfig, *, pretrained: bool = True) -> nn.Module:
    """The network named by `cfg.name`; forward (B, C, H, W) -> logits (B, classes, H, W).

    `pretrained=False` ignores `model.pretrained_path`: use it to rebuild a trained model whose
    weights are loaded right after (inference, export), where that file may not exist.
    """
    builder = MODELS.get(cfg.name)
    if builder is None:
        raise ConfigError(f"model.name must be one of {'|'.join(MODELS)}, got {cfg.name!r}")
    return builder(cfg, pretrained)


def apply_runtime_options(model: nn.Module, cfg: ModelConfig, *, distributed: bool,
                          compile: bool = True) -> nn.Module:
    """channels_last, SyncBatchNorm (under DDP, CUDA only) and torch.compile, in that order.

    The trainer passes `compile=False` and compiles the DDP-wrapped module itself
    (`compile_model`), so DDP's graph-break bucketing applies and the state dict it saves
    never carries `_orig_mod.`. Standalone callers get a compiled wrapper whose keys do carry
    it; `unetdist.models.weights.save_weights` strips that. Either way the returned model's
    inner network accepts state dicts with or without `_orig_mod.` (`accept_compiled_keys`),
    so a checkpoint loads whatever model.compile was when it was written.
    """
    if cfg.sync_bn:
        if not torch.cuda.is_available():
            raise ConfigError("model.sync_bn must be false without CUDA (SyncBatchNorm only "
                              "runs on GPUs), got True")
        if distributed:
            # timm's converter also handles its fused BatchNormAct layers, which torch's
            # converter would replace by a plain SyncBatchNorm, losing the activation
            from timm.layers import convert_sync_batchnorm

            model = convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    accept_compiled_keys(model)
    return compile_model(model, cfg) if compile else model


def compile_model(module: nn.Module, cfg: ModelConfig) -> nn.Module:
    """torch.compile(module) with model.compile_backend when model.compile, else module."""
    if not cfg.compile:
        return module
    return torch.compile(module, backend=cfg.compile_backend)


COMPILED = "_orig_mod."


def _strip_compiled_keys(state_dict, prefix, *_args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix) and COMPILED in k[len(prefix):]]:
        state_dict[prefix + key[len(prefix):].replace(COMPILED, "")] = state_dict.pop(key)


def accept_compiled_keys(model: nn.Module) -> nn.Module:
    """Let `model.load_state_dict` take keys written from a compiled wrapper (`_orig_mod.`).

    Older checkpoints were saved from DDP(compiled model), which accelerate unwraps to the
    compiled wrapper (`_orig_mod.x`): the hook runs at this module's own prefix (empty, or
    `module.` when DDP's own load is called) before strict key matching, and rewrites such keys
    in place. Idempotent; registered once per module.
    """
    if not getattr(model, "_unetdist_accepts_compiled", False):
        model._register_load_state_dict_pre_hook(_strip_compiled_keys)
        model._unetdist_accepts_compiled = True
    return model


__all__ = ["MODELS", "accept_compiled_keys", "apply_runtime_options", "build_model",
           "compile_model"]
