"""Full-resolution inference: Gaussian-blended sliding window, TTA, loading a best model.

The window covers the image with tiles of `eval.tile` px overlapping by `eval.overlap`; the
last tile of a row/column is shifted back to end at the border so no tile needs padding except
when the image itself is smaller than a tile (then its border is replicated: a fundus image's
border is its dark surround, so the padding looks like more of it). Tile probabilities are blended with a
Gaussian weight (sigma = tile/8, as nnU-Net does) so tile borders, where the network sees
little context, count least.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unetdist.config import EvalConfig, RunConfig, config_from_dict
from unetdist.data.ingest.fov import fov_diameter
from unetdist.distributed import inference_autocast
from unetdist.errors import ConfigError, UserError
from unetdist.eval.tta import tta_average
from unetdist.models.registry import build_model
from unetdist.models.weights import clean_state_dict, load_weights
from unetdist.runfolder import resolve_checkpoint, stored_config, weights_file


@lru_cache(maxsize=8)
def _gaussian(tile: int) -> torch.Tensor:
    sigma = tile / 8.0
    x = torch.arange(tile, dtype=torch.float64) - (tile - 1) / 2.0
    g = torch.exp(-(x**2) / (2 * sigma**2))
    w = torch.outer(g, g)
    return (w / w.max()).float()


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile offsets along one axis of `length` >= tile; the last tile ends at the border."""
    stride = max(1, round(tile * (1.0 - overlap)))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _vessel_prob(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) logits -> (B, 1, h, w) vessel probability (K=1 sigmoid, K>1 softmax[1])."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)[:, 1:2]


@lru_cache(maxsize=8)
def _gaussian_on(tile: int, device: torch.device) -> torch.Tensor:
    return _gaussian(tile).to(device)  # one host-to-device copy per tile size, not per image




def _memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last when the model's conv weights are (the training memory format).

    Any weight decides: a 1-input-channel kernel is contiguous in both formats.
    """
    cl = torch.channels_last
    if any(p.dim() == 4 and p.is_contiguous(memory_format=cl) and not p.is_contiguous()
           for p in model.parameters()):
        return cl
    return torch.contiguous_format


def apply_inference_format(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """The trained model in its training memory format (model.channels_last)."""
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _window(model: nn.Module, image: torch.Tensor, cfg: EvalConfig, accelerator,
            precision: str = "no") -> torch.Tensor:
    """One sliding-window pass; image (1,C,H,W) on the model's device -> (1,1,H,W)."""
    _, _, h, w = image.shape
    t = cfg.tile
    ph, pw = max(0, t - h), max(0, t - w)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), mode="replicate")
    H, W = image.shape[-2:]
    weight = _gaussian_on(t, image.device)
    fmt = _memory_format(model)
    acc = torch.zeros((1, 1, H, W), dtype=torch.float32, device=image.device)
    norm = torch.zeros_like(acc)
    ys, xs = tile_starts(H, t, cfg.overlap), tile_starts(W, t, cfg.overlap)
    coords = [(y, x) for y in ys for x in xs]
    for chunk in _batches(coords, cfg.batch_size):
        tiles = torch.cat([image[..., y:y + t, x:x + t] for y, x in chunk])
        tiles = tiles.contiguous(memory_format=fmt)
        with inference_autocast(accelerator, precision, image.device):
            ensemble = getattr(model, "vessel_prob", None)  # eval.ensemble.Ensemble
            probs = ensemble(tiles, _vessel_prob) if ensemble else _vessel_prob(model(tiles))
        for (y, x), p in zip(chunk, probs):
            acc[0, :, y:y + t, x:x + t] += p * weight
            norm[0, :, y:y + t, x:x + t] += weight
    return (acc / norm)[..., :h, :w]


def _param_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def image_scale(cfg: EvalConfig, fov: torch.Tensor) -> float:
    """The factor eval.scale asks for on an image with this FOV (H, W or 1,1,H,W).

    auto matches vessel calibre across datasets: the model saw FOV discs `ref_fov_diameter`
    px wide, so a test disc of diameter d is resized by ref / d.
    """

    if cfg.scale != "auto":
        return float(cfg.scale)
    if cfg.ref_fov_diameter <= 0:
        raise ConfigError("eval.scale=auto needs eval.ref_fov_diameter (the training images' "
                          "FOV diameter in px; models trained before it was recorded need it "
                          "set by hand, e.g. eval.ref_fov_diameter=540 for DRIVE)")
    d = fov_diameter(fov.reshape(fov.shape[-2:]).cpu().numpy() > 0.5)
    return cfg.ref_fov_diameter / d if d > 0 else 1.0


def _rescaled(model: nn.Module, image: torch.Tensor, cfg: EvalConfig, accelerator,
              size: tuple[int, int], antialias: bool = False,
              precision: str = "no") -> torch.Tensor:
    """Predict at `size` (H, W), probabilities resized back to the image's size."""
    native = tuple(image.shape[-2:])
    small = F.interpolate(image, size=size, mode="bilinear", align_corners=False,
                          antialias=antialias)
    prob = _tta_averaged(model, small, cfg, accelerator, precision)
    return F.interpolate(prob, size=native, mode="bilinear", align_corners=False)


@torch.no_grad()
def sliding_window_predict(model: nn.Module, image: torch.Tensor, cfg: EvalConfig, *,
                           accelerator=None, scale: float = 1.0,
                           precision: str = "no") -> torch.Tensor:
    """Vessel probabilities (1,1,H,W) float32 on the model's device for image (1,C,H,W).

    With cfg.tta (flip | dihedral, see unetdist.eval.tta) the result is the mean over the
    views, each a full sliding-window pass on the transformed image, mapped back.
    Autocasts when the accelerator uses mixed precision, or without one under `precision`
    (pass the training precision, train.precision). Tiles take the model's memory format
    (channels_last when its weights are). The model's train/eval mode is restored.
    `scale` (see `image_scale`) resizes the image by that factor first; the result is always
    at the input's size.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected an image of shape (1,C,H,W), got {tuple(image.shape)}")
    model = unwrap(model)
    was_training = model.training
    model.eval()
    try:
        image = image.to(_param_device(model), dtype=torch.float32, non_blocking=True)
        h, w = image.shape[-2:]
        if cfg.resize > 0:
            return _rescaled(model, image, cfg, accelerator, (cfg.resize, cfg.resize),
                             precision=precision)
        if scale != 1.0:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            # antialias when shrinking: an 8 MP HRF image scaled to DRIVE's vessel calibre
            return _rescaled(model, image, cfg, accelerator, size, antialias=scale < 1,
                             precision=precision)
        return _tta_averaged(model, image, cfg, accelerator, precision)
    finally:
        model.train(was_training)


def _tta_averaged(model: nn.Module, image: torch.Tensor, cfg: EvalConfig,
                  accelerator, precision: str) -> torch.Tensor:
    return tta_average(lambda x: _window(model, x, cfg, accelerator, precision), image,
                       cfg.tta)


# ----------------------------------------------------------------------------- loading


def read_checkpoint(path: str | Path) -> tuple[dict, dict, RunConfig]:
    """(state_dict, metadata, config) of anything `resolve_checkpoint` accepts.

    The config comes from the file's metadata (so the file works alone); a folder whose
    weights lack it falls back to its config.yaml or trainer_state.json.
    """

    wf = weights_file(resolve_checkpoint(path))
    state, meta = load_weights(wf)  # UserError on an unreadable file
    meta = dict(meta or {})
    cfg_dict = stored_config(wf, meta)  # DataError unless a mapping
    try:  # typed and bounded before anything is built from it (a file is untrusted)
        cfg = config_from_dict(cfg_dict)
    except ConfigError as e:
        raise ConfigError(f"{wf}: stored config: {e}") from None
    meta["config"] = json.dumps(cfg_dict)
    return state, meta, cfg


def load_checkpoint(path: str | Path) -> tuple[nn.Module, RunConfig, dict]:
    """(model on CPU in eval mode, config, safetensors metadata) of a checkpoint."""

    state, meta, cfg = read_checkpoint(path)
    # Weights come from the file: never look for the encoder's pretrained file again.
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained_path=None,
                                                             compile=False))
    model = build_model(cfg.model, pretrained=False)  # trained weights replace them anyway
    try:
        model.load_state_dict(clean_state_dict(state), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[:2]
        raise UserError(f"weights in {path} do not fit model {cfg.model.name} "
                        f"(width {cfg.model.width}): {' '.join(first)}") from None
    return model.eval(), cfg, meta


def load_for_inference(path: str | Path) -> tuple[nn.Module, RunConfig]:
    """Rebuild the model of a best/ folder or exported file on CPU, in eval mode, in its
    training memory format."""
    model, cfg, _ = load_checkpoint(path)
    return apply_inference_format(model, cfg), cfg


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP: DDP's forward syncs buffers, which would hang uneven ranks."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
