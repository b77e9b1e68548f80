"""`unetdist bench --gpu`: run benchmarks/bench_gpu.py, keep its JSON, record one results row.

The measuring lives in the script (it also runs alone); this module adds the machine
description, writes the JSON, and appends one Markdown row to the GPU table of
benchmarks/RESULTS.md (that table is the file's last section, so a row goes at the end).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from unetdist.atomic import write_atomic
from unetdist.tools.bench import benchmarks_dir, load_benchmark, machine_info

SECTION = "## GPU: `unetdist bench --gpu`"
HEADER = ("| date | device (settings) | fp32 img/s | bf16 img/s | bf16 + channels_last img/s "
          "| + compile img/s | data wait (best) | host syncs / step (best) | 1 -> N scaling |")


def run_gpu(quick: bool, log: Callable[[str], None] = print) -> dict:
    start = time.time()
    doc = load_benchmark("bench_gpu").run_benchmark(quick=quick, log=log)
    doc.update(format=1, quick=quick, machine=machine_info(),
               seconds=round(time.time() - start, 1))
    return doc


def results_row(doc: dict) -> str:
    return load_benchmark("bench_gpu").results_line(doc, time.strftime("%Y-%m-%d"))


def record(doc: dict, path: Path | None = None) -> Path:
    """Append the run's row to RESULTS.md, adding the GPU table when the file has none."""
    path = path or benchmarks_dir() / "RESULTS.md"
    text = path.read_text() if path.is_file() else "# Recorded results\n"
    if HEADER not in text:
        sep = "|" + "---|" * 2 + "---:|" * 7
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{HEADER}\n{sep}\n"
    write_atomic(path, (text.rstrip("\n") + "\n" + results_row(doc) + "\n").encode())
    return path
