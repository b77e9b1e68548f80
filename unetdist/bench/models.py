"""Forward+backward throughput of the seed UNet: fp32 vs bf16 autocast, channels_last on/off.

    python -m unetdist.bench.models [--size 512] [--iters 3] [--batches 1 2] [--json out.json]

The model alone (plain BCE, no optimizer): what the architecture costs. The trainer's whole
step per precision and layout is the `train_step` section (`unetdist.bench.train`).

All configurations run interleaved (one step of each in turn, repeated), so a change in the
machine's load during the run hits every configuration alike and the ratios stay comparable.
Reported figures are medians over the timed steps, after untimed warm-up steps.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from collections.abc import Iterable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from unetdist.models.unet import UNet


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> float:
    """One forward+backward pass; seconds it took."""
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    start = time.perf_counter()
    with ctx:
        logits = model(x)
    loss = F.binary_cross_entropy_with_logits(logits.float(), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def _onednn_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _configs(batches: Iterable[int], precisions: Iterable[str],
             layouts: Iterable[bool]) -> list[dict]:
    return [{"batch": b, "precision": p, "channels_last": cl}
            for b, p, cl in itertools.product(batches, precisions, layouts)]


def speedups(rows: list[dict]) -> dict[str, float]:
    """bf16/fp32 and channels_last/contiguous speed-ups, per batch size."""
    by = {(r["batch"], r["precision"], r["channels_last"]): r["img_per_s"] for r in rows}
    out = {}
    for (b, p, cl), v in sorted(by.items()):
        if p == "bf16" and (b, "fp32", cl) in by:
            out[f"bf16/fp32 (batch {b}, {'channels_last' if cl else 'contiguous'})"] = \
                v / by[(b, "fp32", cl)]
        if cl and (b, p, False) in by:
            out[f"channels_last/contiguous (batch {b}, {p})"] = v / by[(b, p, False)]
    return out


def run_benchmark(size: int = 512, iters: int = 3, *, warmup: int = 1,
                  batches: Iterable[int] = (1, 2), precisions: Iterable[str] = ("fp32", "bf16"),
                  channels_last: Iterable[bool] = (False, True), width: int = 64,
                  in_channels: int = 1, threads: int | None = None,
                  progress: bool = True) -> dict:
    """Measure img/s of UNet(width) forward+backward at SIZExSIZE on the CPU.

    Returns {"meta": {...}, "rows": [{batch, precision, channels_last, img_per_s,
    sec_per_step, steps}], "ratios": {name: speed-up}}.
    """
    from tqdm import tqdm


    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = UNet(in_channels, 1, bilinear=True, width=width).train()
    models = {False: base}
    if any(channels_last):
        torch.manual_seed(0)
        models[True] = UNet(in_channels, 1, bilinear=True, width=width).train().to(
            memory_format=torch.channels_last)
    configs = _configs(batches, precisions, channels_last)
    times: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    total = (warmup + iters) * len(configs)
    with tqdm(total=total, desc="bench models", disable=not progress, file=sys.stderr) as bar:
        for rep in range(warmup + iters):
            for i, c in enumerate(configs):
                fmt = torch.channels_last if c["channels_last"] else torch.contiguous_format
                x = torch.randn(c["batch"], in_channels, size, size).to(memory_format=fmt)
                y = (torch.rand(c["batch"], 1, size, size) > 0.9).float()
                dt = _step(models[c["channels_last"]], x, y, c["precision"] == "bf16")
                if rep >= warmup:
                    times[i].append(dt)
                bar.update(1)
    rows = []
    for i, c in enumerate(configs):
        med = statistics.median(times[i])
        rows.append({**c, "img_per_s": c["batch"] / med, "sec_per_step": med,
                     "steps": len(times[i])})
    meta = {"size": size, "width": width, "in_channels": in_channels, "iters": iters,
            "warmup": warmup, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "onednn_bf16": _onednn_bf16()}
    return {"meta": meta, "rows": rows, "ratios": speedups(rows)}


def format_report(result: dict) -> str:
    """Ratios first, then the table of configurations."""
    m = result["meta"]
    title = (f"UNet(width={m['width']}) forward+backward at {m['size']}x{m['size']}, "
             f"{m['threads']} threads, torch {m['torch']}, median of {m['iters']} steps")
    lines = [title, "", "speed-ups:"]
    lines += [f"  {k:<48} {v:6.2f}x" for k, v in result["ratios"].items()]
    header = f"  {'batch':>5} {'precision':>9} {'channels_last':>13} {'img/s':>8} {'s/step':>8}"
    lines += ["", header]
    for r in result["rows"]:
        lines.append(f"  {r['batch']:>5} {r['precision']:>9} {r['channels_last']!s:>13} "
                     f"{r['img_per_s']:>8.3f} {r['sec_per_step']:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="square input side in px")
    p.add_argument("--iters", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2], help="batch sizes")
    p.add_argument("--width", type=int, default=64, help="UNet base width (64 = the seed)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    a = p.parse_args(argv)
    result = run_benchmark(a.size, a.iters, warmup=a.warmup, batches=a.batches, width=a.width,
                           threads=a.threads)
    print(format_report(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
