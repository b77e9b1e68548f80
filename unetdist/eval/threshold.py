"""Which probability threshold a model's binary masks use (`eval.threshold`).

A number is used as it is. `auto` means the F1-optimal threshold that training chose on the
validation split (`metrics.f1_optimal_threshold`) and stored with the best model: the key
`threshold` of the weights' metadata (so an exported file carries it) or of best/metrics.json
beside them. Without a stored one (no validation split, a model trained before `auto`), auto
falls back to 0.5, the threshold metrics are reported at by default.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from unetdist.config import EvalConfig

DEFAULT = 0.5  # the conventional threshold; also what `auto` reports alongside the chosen one


def fixed_threshold(cfg: EvalConfig) -> float:
    """eval.threshold as a number: itself, or DEFAULT under auto."""
    return DEFAULT if cfg.threshold == "auto" else float(cfg.threshold)


def _valid(value) -> float | None:
    try:
        t = float(value)
    except (TypeError, ValueError):
        return None
    return t if math.isfinite(t) and 0 < t < 1 else None


def _metadata(weights: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 -- unreadable here means no stored threshold
        return {}


def stored_threshold(weights: str | Path, meta: dict | None = None) -> float | None:
    """The threshold training chose for the weights file WEIGHTS (its metadata META, read from
    the file when not given), or None."""
    meta = _metadata(Path(weights)) if meta is None else meta
    if _valid(meta.get("threshold")) is not None:
        return _valid(meta["threshold"])
    path = Path(weights).parent / "metrics.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return _valid(doc.get("threshold")) if isinstance(doc, dict) else None


def chosen_threshold(cfg: EvalConfig, stored: float | None) -> float:
    """The threshold masks use: a numeric eval.threshold, else (auto) the stored one, else
    DEFAULT."""
    if cfg.threshold != "auto":
        return float(cfg.threshold)
    return stored if stored is not None else DEFAULT


def threshold_of(checkpoint: str | Path, meta: dict | None = None) -> float | None:
    """`stored_threshold` of anything `--checkpoint` accepts (a best/ folder, a file, ...)."""
    from unetdist.runfolder import resolve_checkpoint, weights_file

    return stored_threshold(weights_file(resolve_checkpoint(checkpoint)), meta)


# ----------------------------------------------------------------------------- multi-label

LABELS_KEY = "label_thresholds"  # metadata / best/metrics.json: {label: threshold} as JSON


def stored_label_thresholds(weights: str | Path, meta: dict | None = None
                            ) -> dict[str, float]:
    """The per-label thresholds training chose for a multi-label model's WEIGHTS ({} when it
    stored none, or stored something that is not {name: number in (0, 1)})."""
    meta = _metadata(Path(weights)) if meta is None else meta
    raw = meta.get(LABELS_KEY)
    if raw is None:
        try:
            raw = json.loads((Path(weights).parent / "metrics.json").read_text()).get(LABELS_KEY)
        except (OSError, ValueError, AttributeError):
            return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): t for k, v in list(raw.items())[:64] if (t := _valid(v)) is not None}


def label_thresholds(cfg: EvalConfig, names: tuple[str, ...] | list[str],
                     stored: dict[str, float] | None = None) -> list[float]:
    """One threshold per label of NAMES: a numeric eval.threshold for every label, else (auto)
    each label's stored choice, else DEFAULT."""
    if cfg.threshold != "auto":
        return [float(cfg.threshold)] * len(names)
    stored = stored or {}
    return [stored.get(n, DEFAULT) for n in names]
