"""Predict vessel maps for an image file or a folder of arbitrary images (no labels needed).

Any PNG/JPEG/TIFF/BMP/GIF image, any size, RGB or gray (16-bit images are scaled to 8 bits).
The FOV comes from a mask folder when given (matched by stem, `<stem>` or `<stem>_mask`), else
it is estimated from the dark border around a fundus photograph, else it is the whole image.
Outputs `<stem>.png` (0/255) and `<stem>_prob.png` (8-bit probability), both at the input's
size and zero outside the FOV; the binary mask is at eval.threshold, under `auto` the threshold
chosen on the validation split when the model was trained. A multi-class model (its class table
stored with it, see `classes_io`) writes `<stem>.png` in the table's colours (argmax; no
threshold), `<stem>.<class>.png` per class and `<stem>.overlay.png` (see `class_outputs`);
outside the FOV every pixel is background. Files that cannot be used are
reported by name; the rest are still processed. Files are read as bytes and decoded from
memory: OpenCV never gets a path (it crashes on names that are not UTF-8), and such a name is
skipped with a warning that shows it as escaped bytes.

Inputs are never overwritten: an output folder equal to or inside the image (or FOV) folder is
refused unless asked for (`check_output_folder`), and even then an output that would replace an
input file is skipped and reported. An earlier run's outputs in the image folder (a `<stem>.png`
with its `<stem>_prob.png`, or with its `<stem>.overlay.png` and the `<stem>.<class>.png` maps)
are not taken for inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unetdist.atomic import inside, writable_folder
from unetdist.config import RunConfig
from unetdist.data.classes import ClassTable
from unetdist.data.ingest.fov import estimate_fov
from unetdist.data.preprocess import preprocess
from unetdist.errors import DataError, FileSystemError, UserError
from unetdist.eval.class_outputs import prediction_names, write_class_pngs
from unetdist.eval.image_files import IMAGE_EXTS, find_mask, read_image, read_mask
from unetdist.eval.inference import (
    InferencePolicy,
    image_scale,
    inference_policy,
    sliding_window_predict,
)
from unetdist.eval.label_outputs import label_prediction_names, write_label_pngs
from unetdist.eval.outputs import write_prediction_pngs
from unetdist.eval.threshold import fixed_threshold
from unetdist.log import progress_iter


@dataclass
class PredictReport:
    done: list[str] = field(default_factory=list)  # input file names written
    ignored: list[str] = field(default_factory=list)  # earlier outputs found among the images
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    estimated_fov: list[str] = field(default_factory=list)  # names whose FOV was estimated
    bad_names: list[str] = field(default_factory=list)  # names not UTF-8, as escaped bytes


@torch.no_grad()
def predict_image(model: nn.Module, rgb: np.ndarray, fov: np.ndarray, cfg: RunConfig,
                  policy: InferencePolicy | None = None, classes: bool = False,
                  labels: bool = False) -> np.ndarray:
    """(H, W) float32 vessel probability, zero outside the FOV; with CLASSES (a multi-class
    model), (K, H, W) class probabilities, background (class 0) certain outside the FOV; with
    LABELS (a multi-label model), (C, H, W) label probabilities, zero outside the FOV.

    Without a `policy`, forwards autocast to the training precision (train.precision)."""

    x = preprocess(rgb, fov.astype(np.uint8), cfg.data)
    scale = image_scale(cfg.eval, torch.from_numpy(fov))
    policy = policy or inference_policy(model, precision=cfg.train.precision)
    prob = sliding_window_predict(model, torch.from_numpy(np.ascontiguousarray(x))[None],
                                  cfg.eval, scale=scale, policy=policy, classes=classes,
                                  labels=labels)
    if classes or labels:
        from unetdist.eval.class_outputs import resize_probs

        prob = resize_probs(prob[0].float().cpu().numpy(), fov.shape)
        prob = prob * fov
        if classes:
            prob[0] += 1 - fov  # outside the FOV: background, as the datasets define it
        return prob
    prob = prob[0, 0].float().cpu().numpy()
    if prob.shape != fov.shape:
        import cv2

        prob = cv2.resize(prob, fov.shape[::-1], interpolation=cv2.INTER_LINEAR)
    return prob * fov


def head_kind(table: ClassTable | None) -> dict[str, bool]:
    """`predict_image`'s keywords for a model of TABLE: classes (softmax) or labels (sigmoids)."""
    if table is None or table.is_binary:
        return {}
    return {"labels": True} if table.is_multilabel else {"classes": True}


def list_images(images: Path) -> list[Path]:
    """The image files of folder IMAGES, or IMAGES itself when it is an image file."""
    if images.is_file():
        if images.suffix.lower() not in IMAGE_EXTS:
            raise DataError(f"--images {images} is not an image file (expected "
                            f"{'/'.join(e[1:] for e in IMAGE_EXTS)}) nor a folder")
        return [images]
    if not images.is_dir():
        raise DataError(f"image file or folder not found: {images}")
    return sorted(p for p in images.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def input_folder(images: Path) -> Path:
    """The folder the inputs live in: IMAGES, or the folder of an image file."""
    return images.parent if images.is_file() else images


def escaped(name: str) -> str:
    """A file name as Python shows its bytes, e.g. b'bad\\xff.png' (printable whatever it holds)."""
    return repr(os.fsencode(name))


def split_bad_names(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """(paths whose names are valid UTF-8, the other names as escaped bytes)."""
    good, bad = [], []
    for p in paths:
        try:
            p.name.encode("utf-8")
            good.append(p)
        except UnicodeEncodeError:  # undecodable bytes, kept by Python as lone surrogates
            bad.append(escaped(p.name))
    return good, bad


def split_outputs(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(inputs, earlier outputs): a `<stem>.png` beside its `<stem>_prob.png` is a prediction;
    so is one beside its `<stem>.overlay.png`, with the `<stem>.<class>.png` maps (multi-class)
    or the `<stem>.<label>.png` and `<stem>.<label>.prob.png` maps (multi-label)."""
    names = {p.name for p in paths}
    ours = {n for n in names if n.endswith("_prob.png") and n[:-len("_prob.png")] + ".png" in names}
    ours |= {n[:-len("_prob.png")] + ".png" for n in ours}
    stems = {n[:-len(".overlay.png")] for n in names
             if n.endswith(".overlay.png") and n[:-len(".overlay.png")] + ".png" in names}
    ours |= {n for n in names if n.endswith(".png") and
             (n[:-len(".png")] in stems or n[:-len(".png")].rsplit(".", 1)[0] in stems
              or n.endswith(".prob.png") and n[:-len(".prob.png")].rsplit(".", 1)[0] in stems)}
    return [p for p in paths if p.name not in ours], [p for p in paths if p.name in ours]


def check_output_folder(out_dir: Path, images_dir: Path, fov_dir: Path | None,
                        overwrite: bool) -> None:
    """Refuse --out equal to or inside --images/--fov unless OVERWRITE (inputs stay safe)."""
    out = out_dir.resolve()
    for flag, folder in (("--images", input_folder(images_dir)), ("--fov", fov_dir)):
        if folder is None or overwrite:
            continue
        src = folder.resolve()
        if out == src or src in out.parents:
            where = "is" if out == src else "is inside"
            raise UserError(f"--out {out_dir} {where} the input folder {flag} {folder}: "
                            "predictions would mix with (or replace) the inputs; choose another "
                            "--out, or pass --overwrite to write there anyway (inputs are "
                            "never replaced)")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder; choose another --out")


def _clash(out_dir: Path, stem: str, protected: set[Path],
           table: ClassTable | None = None) -> str | None:
    """Why STEM's outputs must not be written (one would replace an input), or None."""
    names = ([f"{stem}.png", f"{stem}_prob.png"] if table is None
             else label_prediction_names(stem, table, overlay=True) if table.is_multilabel
             else prediction_names(stem, table, overlay=True))
    for target in (inside(out_dir, n) for n in names):
        if target.resolve() in protected:
            return f"its output {target} would replace an input file; not written (choose " \
                   "another --out)"
    return None


def _protected(inputs: list[Path], fov_dir: Path | None) -> set[Path]:
    """Files an output must never replace: the images used and every file of the FOV folder."""
    files = list(inputs) + ([p for p in fov_dir.iterdir() if p.is_file()] if fov_dir else [])
    return {p.resolve() for p in files}


def _fov_for(path: Path, rgb: np.ndarray, fov_dir: Path | None, report: PredictReport
             ) -> np.ndarray:
    mask_path = find_mask(fov_dir, path.stem) if fov_dir is not None else None
    if mask_path is not None:
        fov = read_mask(mask_path)
        if fov.shape != rgb.shape[:2]:
            raise DataError(f"FOV mask {mask_path.name} is {fov.shape[1]}x{fov.shape[0]}, "
                            f"image {path.name} is {rgb.shape[1]}x{rgb.shape[0]}")
        return fov
    report.estimated_fov.append(path.name)
    return default_fov(rgb)


def default_fov(rgb: np.ndarray) -> np.ndarray:
    """The FOV of an image without a mask: estimated from a fundus photograph's dark border,
    else the whole image."""
    est = estimate_fov(rgb)
    return est if est is not None else np.ones(rgb.shape[:2], dtype=bool)


def _write(out_dir: Path, stem: str, prob: np.ndarray, cfg: RunConfig,
           table: ClassTable | None, rgb: np.ndarray, fov: np.ndarray,
           thresholds: Sequence[float]) -> None:
    if table is None:
        write_prediction_pngs(out_dir, stem, prob, fixed_threshold(cfg.eval))
    elif table.is_multilabel:
        write_label_pngs(out_dir, stem, prob, list(thresholds), table, rgb=rgb, fov=fov)
    else:
        write_class_pngs(out_dir, stem, prob, table, rgb=rgb, fov=fov)


def predict_folder(model: nn.Module, cfg: RunConfig, images_dir: Path, out_dir: Path, *,
                   fov_dir: Path | None = None, progress: bool = True,
                   table: ClassTable | None = None,
                   thresholds: Sequence[float] = ()) -> PredictReport:
    """Predict every image of images_dir (or that one image file) into out_dir; failures are
    collected, not raised. TABLE: the model's classes or labels (None: binary); THRESHOLDS:
    a multi-label model's, one per label (`load_predictor`)."""
    report, stems = PredictReport(), {}
    policy = inference_policy(model, precision=cfg.train.precision)  # once for every image
    paths, report.bad_names = split_bad_names(list_images(images_dir))
    inputs, earlier = split_outputs(paths)
    report.ignored = [p.name for p in earlier]
    protected = _protected(inputs, fov_dir)
    for path in progress_iter(inputs, len(inputs), desc="predict", unit="img", enabled=progress):
        if path.stem in stems:
            report.failed.append((path.name, f"same name stem as {stems[path.stem]}"))
            continue
        stems[path.stem] = path.name
        clash = _clash(out_dir, path.stem, protected, table)
        if clash:
            report.failed.append((path.name, clash))
            continue
        try:
            rgb = read_image(path)
            fov = _fov_for(path, rgb, fov_dir, report)
            prob = predict_image(model, rgb, fov, cfg, policy, **head_kind(table))
        except (DataError, ValueError) as e:
            report.failed.append((path.name, str(e)))
            continue
        try:
            _write(out_dir, path.stem, prob, cfg, table, rgb, fov, thresholds)
        except OSError as e:  # the same for every file: stop, naming the folder
            raise FileSystemError.of(e, out_dir, "write predictions into", "--out") from None
        report.done.append(path.name)
    return report


def model_table(checkpoint: str | Path, meta: dict, num_classes: int) -> ClassTable | None:
    """The classes of a model with NUM_CLASSES outputs: a multi-label table stored with it,
    None for a binary model (1 or 2 outputs), else the table stored with it (`classes_io.stored_table`), or, when none was
    stored, `classes_io.generic_table` with a warning."""
    from unetdist.eval.classes_io import check_fits, generic_table, stored_table
    from unetdist.log import warn
    from unetdist.runfolder import resolve_checkpoint, weights_file

    wf = weights_file(resolve_checkpoint(checkpoint))
    table = stored_table(wf, meta)
    if table is not None and table.is_multilabel:  # 2 labels are 2 outputs too
        check_fits(table, num_classes, f"the labels stored with {wf}")
        return table
    if num_classes <= 2:
        return None
    if table is None:
        table = generic_table(num_classes)
        warn(f"{wf}: a {num_classes}-class model without a stored class table (classes.json "
             f"beside it, or export metadata); its classes are named {', '.join(table.names)}")
    check_fits(table, num_classes, f"the classes stored with {wf}")
    return table


def load_predictor(checkpoints: Sequence[str | Path], device: str = "auto",
                   overrides: Sequence[str] = ()
                   ) -> tuple[nn.Module, RunConfig, ClassTable | None, list[float]]:
    """(model or ensemble on DEVICE, its config, its class table: None for binary, a
    multi-label model's per-label thresholds: [] for the others) as `predict` and the Python
    API use them: `eval.key=value` overrides applied, and eval.threshold=auto replaced by the
    threshold(s) chosen on validation (stored with the first model; 0.5 without one)."""
    import dataclasses

    from unetdist.config import config_from_dict, to_dict
    from unetdist.distributed import pick_device
    from unetdist.eval.ensemble import load_models
    from unetdist.eval.threshold import (
        chosen_threshold,
        label_thresholds,
        stored_label_thresholds,
        threshold_of,
    )
    from unetdist.runfolder import resolve_checkpoint, weights_file

    model, cfg, metas = load_models(checkpoints)
    cfg = config_from_dict(to_dict(cfg), list(overrides), only="eval")
    table = model_table(checkpoints[0], metas[0], cfg.model.num_classes)
    thresholds = []
    if table is not None and table.is_multilabel:
        stored = stored_label_thresholds(weights_file(resolve_checkpoint(checkpoints[0])),
                                         metas[0])
        thresholds = label_thresholds(cfg.eval, table.label_names, stored)
    if cfg.eval.threshold == "auto":
        t = chosen_threshold(cfg.eval, threshold_of(checkpoints[0], metas[0]))
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, threshold=t))
    return model.to(pick_device(device)), cfg, table, thresholds


def predict_images(checkpoints: Sequence[str | Path], images: str | Path, out: str | Path, *,
                   fov_dir: str | Path | None = None, overwrite: bool = False,
                   device: str = "auto", overrides: Sequence[str] = (),
                   progress: bool = True) -> PredictReport:
    """The whole `unetdist predict` job: check the folders, load the model(s) once, predict.

    IMAGES is a folder or one image file. DataError/UserError (one line) for a missing or empty
    image folder, a missing FOV folder or an output folder that would mix with the inputs or
    cannot be written; per-file failures are in the report.
    """
    images, out = Path(images), Path(out)
    if not split_outputs(list_images(images))[0]:
        raise DataError(f"no image files (png/jpg/tif/...) in {images}")
    fov = Path(fov_dir) if fov_dir is not None else None
    if fov is not None and not fov.is_dir():
        raise DataError(f"FOV mask folder not found: {fov}")
    check_output_folder(out, images, fov, overwrite)
    model, cfg, table, thresholds = load_predictor(checkpoints, device, overrides)
    writable_folder(out, "--out", "write predictions into")
    return predict_folder(model, cfg, images, out, fov_dir=fov, progress=progress, table=table,
                          thresholds=thresholds)
