"""`unetdist export`: a best model as one safetensors file or an ONNX graph."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a best model as a self-contained .safetensors file or an .onnx graph"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="RUN/best folder or a single exported .safetensors file")
    p.add_argument("--format", required=True, choices=("safetensors", "onnx"))
    p.add_argument("--out", required=True, help="output file (e.g. /shared/models/vessels.onnx)")
    p.add_argument("--exporter", default="auto", choices=("auto", "dynamo", "torchscript"),
                   help="ONNX exporter (auto: dynamo, falling back to torchscript)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the onnxruntime comparison with torch")


def run(args: argparse.Namespace) -> int:
    from unetdist.errors import UserError
    from unetdist.eval.export import ONNX_TOLERANCE, export_onnx, export_safetensors

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out must be a file path, {out} is a folder")
    if args.format == "safetensors":
        export_safetensors(args.checkpoint, out)
        print(f"wrote {out} (weights + config; usable as --checkpoint)")
        return 0
    try:
        import onnx  # noqa: F401

        if args.exporter == "dynamo":
            import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"ONNX export needs the export extra (pip install 'unetdist[export]'): "
                        f"{e.name} is missing") from None
    check = not args.no_check
    if check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise UserError("onnxruntime is missing for the check; install it or pass "
                            "--no-check") from None
    res = export_onnx(args.checkpoint, out, exporter=args.exporter, check=check)
    msg = f"wrote {out} ({res['exporter']} exporter, dynamic batch/height/width)"
    if res["max_abs_diff"] is not None:
        msg += (f"; onnxruntime matches torch: max |diff| {res['max_abs_diff']:.2e} "
                f"<= {ONNX_TOLERANCE}")
    print(msg)
    return 0
