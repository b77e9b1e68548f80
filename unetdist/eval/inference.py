"""Full-resolution inference: whole image or Gaussian-blended sliding window, TTA, loading.

`eval.tile=0` predicts each image in one window: the image padded (replicating its border) to
the network's multiple (`network_multiple`), so no pixel lacks context and nothing is computed
twice. With `eval.tile` > 0 the window covers the image with tiles of that many px overlapping
by `eval.overlap`; the last tile of a row/column is shifted back to end at the border so no tile
needs padding except when the image itself is smaller than a tile (then its border is
replicated: a fundus image's border is its dark surround, so the padding looks like more of
it). Tile probabilities are blended with a Gaussian weight (sigma = tile/8, as nnU-Net does) so
tile borders, where the network sees little context, count least.

The windows of every TTA view go through the network together, `eval.batch_size` per forward,
so flip TTA of a whole image is one forward. How each forward runs (device, autocast, memory
format) is an `InferencePolicy`, decided once per job by `inference_policy`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unetdist.config import EvalConfig, RunConfig, config_from_dict
from unetdist.data.ingest.fov import fov_diameter
from unetdist.distributed import inference_autocast
from unetdist.errors import ConfigError, UserError
from unetdist.eval.tta import views
from unetdist.eval.windows import gaussian_on, inference_size, network_multiple, window_plan
from unetdist.models.registry import build_model
from unetdist.models.weights import clean_state_dict, load_weights
from unetdist.runfolder import resolve_checkpoint, stored_config, weights_file

# eval.tile=0 on a GPU too small for one whole image falls back to tiles of this size
FALLBACK_TILE = 512


@dataclasses.dataclass(frozen=True)
class InferencePolicy:
    """How every inference forward runs; built once per job by `inference_policy`."""

    device: torch.device  # where the model's weights are
    autocast: Callable[[], contextlib.AbstractContextManager]  # a fresh autocast context
    memory_format: torch.memory_format  # the weights' format (channels_last when trained so)


def inference_policy(model: nn.Module, *, accelerator=None,
                     precision: str = "no") -> InferencePolicy:
    """The policy for MODEL: the accelerator's mixed precision when one is given, else
    `precision` (the training precision; fp16 only on CUDA), fp32 by default."""
    model = unwrap(model)
    device = _param_device(model)
    return InferencePolicy(device, partial(inference_autocast, accelerator, precision, device),
                           _memory_format(model))


def _vessel_prob(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) logits -> (B, 1, h, w) vessel probability (K=1 sigmoid, K>1 softmax[1])."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)[:, 1:2]


def _class_probs(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) logits -> (B, K, h, w) class probabilities (softmax over K >= 2)."""
    if logits.shape[1] < 2:
        raise ConfigError(f"a multi-class model needs >= 2 outputs (model.num_classes), got "
                          f"{logits.shape[1]}")
    return torch.softmax(logits.float(), dim=1)


def _label_probs(logits: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) logits -> (B, C, h, w) label probabilities (one sigmoid per label)."""
    return torch.sigmoid(logits.float())


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


def _forward(model: nn.Module, batch: torch.Tensor, policy: InferencePolicy,
             to_prob: Callable[[torch.Tensor], torch.Tensor] = _vessel_prob) -> torch.Tensor:
    batch = batch.contiguous(memory_format=policy.memory_format)
    with policy.autocast():
        ensemble = getattr(model, "vessel_prob", None)  # eval.ensemble.Ensemble
        return ensemble(batch, to_prob) if ensemble else to_prob(model(batch))


def _views_predict(model: nn.Module, image: torch.Tensor, cfg: EvalConfig, tile: int,
                   policy: InferencePolicy, to_prob=_vessel_prob) -> torch.Tensor:
    """Mean over the TTA views of the blended window probabilities, (1,P,h,w): P = 1 for the
    vessel probability, K for class probabilities (`to_prob`).

    The windows of all views are batched together: same-size windows share forwards.
    """
    vs, m = views(cfg.tta), network_multiple(model)
    inputs, plans, norms = [], [], []
    for v in vs:
        x = v.forward(image)
        plan = window_plan(*x.shape[-2:], tile, cfg.overlap, m)
        ph, pw = plan.padded[0] - x.shape[-2], plan.padded[1] - x.shape[-1]
        inputs.append(F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x)
        plans.append(plan)
        # one weight sum per pixel, shared by the P channels (it broadcasts in the division)
        norms.append(torch.zeros((1, 1, *plan.padded), dtype=torch.float32, device=x.device)
                     if tile else None)
    accs: list[torch.Tensor | None] = [None] * len(vs)  # allocated once P is known
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for i, plan in enumerate(plans):
        groups.setdefault(plan.window, []).extend((i, y, x) for y, x in plan.starts)
    for window, jobs in groups.items():
        for n in range(0, len(jobs), cfg.batch_size):
            _blend_chunk(model, window, jobs[n:n + cfg.batch_size], inputs, accs, norms,
                         tile, policy, to_prob)
    total = None
    for v, x, acc, norm in zip(vs, inputs, accs, norms):
        vh, vw = (image.shape[-1], image.shape[-2]) if v.k % 2 else image.shape[-2:]
        p = v.inverse((acc / norm if norm is not None else acc)[..., :vh, :vw])
        total = p if total is None else total + p
    return total / len(vs)


def _blend_chunk(model: nn.Module, window: tuple[int, int], chunk: list, inputs: list,
                 accs: list, norms: list, tile: int, policy: InferencePolicy,
                 to_prob=_vessel_prob) -> None:
    """One forward over CHUNK's (view, y, x) windows of size WINDOW, added into the views'
    probability maps (Gaussian-weighted tiles, or the whole view as it is)."""
    th, tw = window
    batch = torch.cat([inputs[i][..., y:y + th, x:x + tw] for i, y, x in chunk])
    probs = _forward(model, batch, policy, to_prob)
    weight = gaussian_on(tile, batch.device) if tile else None
    for (i, y, x), p in zip(chunk, probs):
        if accs[i] is None:
            accs[i] = torch.zeros((1, p.shape[0], *inputs[i].shape[-2:]), dtype=torch.float32,
                                  device=p.device)
        if weight is None:  # the whole view in one window
            accs[i][0] = p
            continue
        accs[i][0, :, y:y + th, x:x + tw] += p * weight
        norms[i][0, :, y:y + th, x:x + tw] += weight


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


def _predict_at(model: nn.Module, image: torch.Tensor, cfg: EvalConfig,
                policy: InferencePolicy, to_prob=_vessel_prob) -> torch.Tensor:
    """The views' probabilities for IMAGE as given; tile 0 falls back to tiles on a CUDA
    out-of-memory (the whole image did not fit)."""
    if cfg.tile or policy.device.type != "cuda":
        return _views_predict(model, image, cfg, cfg.tile, policy, to_prob)
    try:
        return _views_predict(model, image, cfg, 0, policy, to_prob)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        from unetdist.log import rank_warn

        rank_warn(f"eval.tile=0: a whole {tuple(image.shape[-2:])} image does not fit in GPU "
                  f"memory; using tiles of {FALLBACK_TILE} px for it")
        return _views_predict(model, image, cfg, FALLBACK_TILE, policy, to_prob)


@torch.no_grad()
def sliding_window_predict(model: nn.Module, image: torch.Tensor, cfg: EvalConfig, *,
                           policy: InferencePolicy | None = None, scale: float = 1.0,
                           accelerator=None, precision: str = "no",
                           classes: bool = False, labels: bool = False) -> torch.Tensor:
    """Vessel probabilities (1,1,H,W) float32 on the model's device for image (1,C,H,W);
    with `classes`, the class probabilities (1,K,H,W) of a multi-class model (softmax of its K
    logits: windows, views and resizing all average probabilities, so each pixel's K values
    still sum to 1); with `labels`, the C label probabilities (1,C,H,W) of a multi-label model
    (one sigmoid per output).

    With cfg.tta (flip | dihedral, see unetdist.eval.tta) the result is the mean over the
    views, mapped back. `policy` says how forwards run (build it once per job with
    `inference_policy`); without one, it is built here from `accelerator` / `precision`
    (fp32 when neither is given). The model's train/eval mode is restored. `scale` (see
    `image_scale`) resizes the image by that factor first; the result is always at the
    input's size.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected an image of shape (1,C,H,W), got {tuple(image.shape)}")
    model = unwrap(model)
    policy = policy or inference_policy(model, accelerator=accelerator, precision=precision)
    to_prob = _class_probs if classes else _label_probs if labels else _vessel_prob
    was_training = model.training
    model.eval()
    try:
        image = image.to(policy.device, dtype=torch.float32, non_blocking=True)
        native = tuple(image.shape[-2:])
        size = inference_size(*native, cfg, scale)
        if size == native:
            return _predict_at(model, image, cfg, policy, to_prob)
        # antialias when shrinking: an 8 MP HRF image scaled to DRIVE's vessel calibre
        small = F.interpolate(image, size=size, mode="bilinear", align_corners=False,
                              antialias=cfg.resize <= 0 and scale < 1)
        prob = _predict_at(model, small, cfg, policy, to_prob)
        # probabilities, never labels, are resized: a convex blend keeps each pixel's sum 1
        return F.interpolate(prob, size=native, mode="bilinear", align_corners=False)
    finally:
        model.train(was_training)


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
