"""Model weights as safetensors: clean key names, string metadata, atomic writes.

Keys are stored without the wrappers' prefixes (`_orig_mod.` from torch.compile, `module.`
from DDP), so weights saved from a compiled or distributed model load into a plain one.
Nothing here unpickles: safetensors holds tensors and a str->str header only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from unetdist.atomic import atomic_file
from unetdist.errors import UserError

COMPILE_PREFIX = "_orig_mod."
DDP_PREFIX = "module."


def _clean_key(key: str) -> str:
    # a wrapper may sit inside another (DDP around a compiled model or the reverse), so strip
    # leading prefixes until none is left; `_orig_mod` is never a real submodule name, so it
    # is also dropped where a compiled submodule put it in the middle of a key
    stripped = True
    while stripped:
        stripped = False
        for prefix in (COMPILE_PREFIX, DDP_PREFIX):
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key.replace("." + COMPILE_PREFIX, ".")


def clean_state_dict(sd: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """The state dict with `_orig_mod.` / `module.` wrapper prefixes removed."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in sd.items():
        new = _clean_key(key)
        if new in out:
            raise ValueError(f"state dict keys {key!r} and another both map to {new!r}")
        out[new] = value
    return out


def _to_saveable(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dense, contiguous CPU tensors; tensors sharing storage are copied apart.

    safetensors refuses aliased tensors, and channels_last weights must be written in the
    standard layout so that the file does not depend on the runtime memory format.
    """
    out, seen = {}, set()
    for key, t in sd.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[key] = t
    return out


def save_weights(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
                 path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write clean weights + string metadata to PATH (temp file + rename). Returns PATH.

    The bytes are serialised in memory and written with a plain open(): the file then follows
    the umask (safetensors' save_file creates 0600 files, unreadable by colleagues on shared
    storage) and a full disk is an OSError with its errno (not a SafetensorError).
    """
    from safetensors.torch import save

    sd = (model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module)
          else model_or_state_dict)
    meta = dict(metadata or {})
    bad = [k for k, v in meta.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        raise TypeError(f"safetensors metadata must map str to str; bad keys: {bad}")
    path = Path(path)
    data = save(_to_saveable(clean_state_dict(sd)), metadata=meta)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict on CPU, metadata) from a safetensors file; UserError if unusable."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict
    except Exception as e:  # noqa: BLE001 - safetensors' own error type for bad headers
        raise UserError(f"cannot read weights file {path} as safetensors: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return sd, meta


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a torch checkpoint read with weights_only.

    Accepts a bare state dict or one under "state_dict"/"model" (common trainer layouts); drops
    non-tensor entries such as the seed tutorial's `mask_values`; strips wrapper prefixes.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return dict(clean_state_dict(load_weights(path)[0]))
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling refusals and corrupt files alike
        raise UserError(f"cannot read weights file {path} (safetensors or a torch state dict "
                        f"loadable with weights_only=True): {str(e).splitlines()[0]}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise UserError(f"weights file {path} holds a {type(obj).__name__}, not a state dict")
    return dict(clean_state_dict({k: v for k, v in obj.items() if torch.is_tensor(v)}))
