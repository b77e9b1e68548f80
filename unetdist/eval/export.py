"""Export a best model: one self-contained safetensors file, or ONNX with dynamic shapes.

ONNX: torch.onnx.export with the dynamo exporter (falling back to the TorchScript exporter if
it fails), dynamic batch/height/width, weights inside the file, the run config in the model's
metadata_props. Control flow on shapes is baked into the graph at export, so the sample input
has odd sides (every "pad to a multiple" branch is taken, and padding by zero at other sizes
is still correct); the result is then checked with onnxruntime at other sizes and batches.

A multi-class model's class table (`classes_io`: classes.json beside best/ or already in the
metadata) goes into both: the safetensors metadata key `classes` and, for ONNX, the model's
doc string and a `classes` metadata entry (the table's JSON), so an exported file names its
outputs.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unetdist.atomic import atomic_file
from unetdist.errors import FileSystemError, UserError
from unetdist.eval.inference import load_checkpoint, read_checkpoint
from unetdist.models.weights import clean_state_dict, save_weights

ONNX_TOLERANCE = 1e-4  # max |onnxruntime - torch| on the logits (absolute, plus the same rel.)
SAMPLE_HW = (67, 83)  # odd sides: see the module docstring
OUTPUT_NOTE = ("logits; the vessel probability is sigmoid(logit) for 1 channel, softmax(logits)[1] "
               "for more; input preprocessed as config.data")
CLASSES_NOTE = ("logits of the classes in metadata 'classes' (softmax over them; the predicted "
                "class is the argmax); input preprocessed as config.data; classes: ")
LABELS_NOTE = ("logits of the labels after the background in metadata 'classes' (one sigmoid "
               "each, labels may overlap; thresholds in metadata 'label_thresholds' when "
               "training chose them); input preprocessed as config.data; classes: ")
CHECK_SHAPES = ((3, 96, 128), (1, 77, 101))  # (batch, H, W) checked with onnxruntime


def export_safetensors(checkpoint: str | Path, out: str | Path) -> Path:
    """Weights + metadata (format, config, step) in one file usable alone as --checkpoint."""

    state, meta, _ = read_checkpoint(checkpoint)
    meta.setdefault("format", "unetdist-1")
    _add_classes(checkpoint, meta)
    try:
        return save_weights(clean_state_dict(state), Path(out), meta)  # temp + rename inside
    except OSError as e:
        raise FileSystemError.of(e, out, "write", "--out") from None


def _add_classes(checkpoint: str | Path, meta: dict) -> None:
    """META["classes"]: the class table stored with the checkpoint, when it has one."""
    from unetdist.eval.classes_io import META_KEY, classes_json, stored_table
    from unetdist.runfolder import resolve_checkpoint, weights_file

    table = stored_table(weights_file(resolve_checkpoint(checkpoint)), meta)
    if table is not None:
        meta[META_KEY] = classes_json(table)


def _export_graph(model: nn.Module, sample: torch.Tensor, path: Path, exporter: str) -> str:
    """Write the ONNX graph with the first exporter that works; returns the one used."""
    names = {"input_names": ["image"], "output_names": ["logits"]}
    errors = []
    order = ("dynamo", "torchscript") if exporter == "auto" else (exporter,)
    for kind in order:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                if kind == "dynamo":
                    auto = torch.export.Dim.AUTO
                    torch.onnx.export(model, (sample,), str(path), dynamo=True,
                                      external_data=False, verbose=False,
                                      dynamic_shapes=({0: auto, 2: auto, 3: auto},), **names)
                else:
                    axes = {0: "batch", 2: "height", 3: "width"}
                    torch.onnx.export(model, (sample,), str(path), dynamo=False,
                                      opset_version=17, dynamic_axes={"image": axes,
                                                                      "logits": axes}, **names)
            return kind
        except Exception as e:  # noqa: BLE001 -- exporters raise many types; try the next
            errors.append(f"{kind}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    raise UserError("ONNX export failed (" + "; ".join(errors) + ")")


def _finish_onnx(graph: Path, out: Path, meta: dict) -> None:
    """Add metadata, check, save as one file (no external data), rename into place."""
    import onnx

    proto = onnx.load(str(graph), load_external_data=True)
    classes = meta.get("classes")
    note = (None if classes is None else
            (LABELS_NOTE if '"multilabel"' in classes else CLASSES_NOTE) + classes)
    props = [("format", meta.get("format", "unetdist-1")), ("config", meta["config"]),
             ("step", meta.get("step", "")), ("output", note or OUTPUT_NOTE)]
    if classes is not None:
        props.append(("classes", classes))
        proto.doc_string = note
    if "label_thresholds" in meta:
        props.append(("label_thresholds", meta["label_thresholds"]))
    for k, v in props:
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    with atomic_file(out) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)


def check_onnx(path: Path, model: nn.Module, in_channels: int,
               shapes=CHECK_SHAPES, seed: int = 0) -> float:
    """Max |onnxruntime - torch| of the logits over `shapes`; UserError beyond tolerance."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b, h, w in shapes:
        x = torch.randn(b, in_channels, h, w, generator=gen)
        with torch.no_grad():
            ref = model(x).float().numpy()
        got = sess.run(["logits"], {"image": x.numpy()})[0]
        if got.shape != ref.shape:
            raise UserError(f"ONNX output shape {got.shape} != torch {ref.shape} at {b}x{h}x{w}")
        worst = max(worst, float(np.abs(got - ref).max()))
        if not np.allclose(got, ref, atol=ONNX_TOLERANCE, rtol=ONNX_TOLERANCE):
            raise UserError(f"ONNX output differs from torch by {worst:.3g} at input "
                            f"{b}x{in_channels}x{h}x{w} (tolerance {ONNX_TOLERANCE})")
    return worst


def export_onnx(checkpoint: str | Path, out: str | Path, *, exporter: str = "auto",
                check: bool = True) -> dict:
    """ONNX file with dynamic batch/height/width; returns {"exporter", "max_abs_diff"}."""
    model, cfg, meta = load_checkpoint(checkpoint)
    _add_classes(checkpoint, meta)
    model = model.float().eval()
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileSystemError.of(e, out, "write", "--out") from None
    sample = torch.randn(2, cfg.model.in_channels, *SAMPLE_HW,
                         generator=torch.Generator().manual_seed(0))
    graph = out.with_name(f".{out.name}.graph-{os.getpid()}.onnx")
    try:
        used = _export_graph(model, sample, graph, exporter)
        _finish_onnx(graph, out, meta)
    except OSError as e:
        raise FileSystemError.of(e, out, "write", "--out") from None
    finally:
        for p in graph.parent.glob(f"{graph.name}*"):  # the graph and any external data
            p.unlink(missing_ok=True)
    diff: float | None = None
    if check:
        try:
            diff = check_onnx(out, model, cfg.model.in_channels)
        except UserError:
            out.unlink(missing_ok=True)  # never leave a file that gives wrong answers
            raise
    return {"exporter": used, "max_abs_diff": diff}
