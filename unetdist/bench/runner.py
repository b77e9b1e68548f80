"""`unetdist bench`: every throughput figure of the project, measured in one run, with ratios.

The sections live beside this module (inside the package, so `unetdist bench` works after any
install; each also runs alone with `python -m unetdist.bench.<name>`); this module runs them
one after the other and aggregates everything into one JSON document with the machine's
description. A section that fails is recorded under "errors" and the others still run.
Sections run in sequence, never concurrently, so they do not compete for the cores; other work
on the machine still skews absolute figures (the load average is recorded). `--gpu` runs
`gpu.py` instead and records its row in docs/RESULTS.md.

Importing this module is cheap (`unetdist --help` reads SECTIONS): sections import lazily.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

SECTIONS = ("pipeline", "train_step", "compile", "ddp", "data_wait", "threads", "staging",
            "inference", "evaluation")
FORMAT = 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    devices = [{"name": torch.cuda.get_device_name(i),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
               for i in range(torch.cuda.device_count())] if cuda else []
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        import accelerate

        acc_version = accelerate.__version__
    except ImportError:
        acc_version = None
    return {"host": platform.node(), "platform": platform.platform(),
            "python": platform.python_version(), "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(), "cpus_usable": usable,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "accelerate": acc_version, "cuda": cuda,
            "cuda_version": torch.version.cuda, "cuda_devices": devices,
            "load_avg_start": list(os.getloadavg())}


# ----------------------------------------------------------------------------- the sections


def bench_pipeline(quick: bool) -> dict:
    from unetdist.bench import pipeline

    return pipeline.run_benchmark(quick=quick, progress=not quick)


def bench_train_step(quick: bool) -> dict:
    from unetdist.bench import train

    return train.bench_train_step(quick)


def bench_compile(quick: bool) -> dict:
    from unetdist.bench import train

    return train.bench_compile(quick)


def bench_data_wait(quick: bool) -> dict:
    from unetdist.bench import train

    return train.bench_data_wait(quick)


def bench_ddp(quick: bool) -> dict:
    from unetdist.bench import ddp

    return ddp.run_benchmark(quick=quick)


def bench_staging(quick: bool) -> dict:
    from unetdist.bench import staging

    with tempfile.TemporaryDirectory(prefix="unetdist-bench-") as d:
        if quick:
            return staging.run_benchmark(8, d, rounds=1)
        return staging.run_benchmark(200, d, rounds=3)


def bench_threads(quick: bool) -> dict:
    from unetdist.bench import threads

    return threads.run_benchmark(quick=quick)


def bench_inference(quick: bool) -> dict:
    from unetdist.bench import inference

    return inference.run_benchmark(quick=quick, progress=not quick)


def bench_evaluation(quick: bool) -> dict:
    from unetdist.bench import evaluation

    return evaluation.run_benchmark(quick=quick, progress=not quick)


RUNNERS: dict[str, Callable[[bool], dict]] = {
    "pipeline": bench_pipeline, "train_step": bench_train_step, "compile": bench_compile,
    "ddp": bench_ddp, "data_wait": bench_data_wait, "threads": bench_threads,
    "staging": bench_staging, "inference": bench_inference, "evaluation": bench_evaluation,
}


# ----------------------------------------------------------------------------- aggregation


def run_all(quick: bool = False, only: tuple[str, ...] = SECTIONS,
            log: Callable[[str], None] = print) -> dict:
    """Run the selected sections in order; a failing one is recorded and skipped."""
    start = time.time()
    result = {"format": FORMAT, "quick": quick, "machine": machine_info(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ratios": {}, "figures": {},
              "sections": {}, "errors": {}, "seconds": {}, "load_avg_after": {}}
    for i, name in enumerate(only, 1):
        log(f"=== [{i}/{len(only)}] {name}")
        t0 = time.perf_counter()
        try:
            result["sections"][name] = RUNNERS[name](quick)
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
            result["errors"][name] = f"{type(e).__name__}: {e}"
            log(f"{name} failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
        result["seconds"][name] = round(time.perf_counter() - t0, 2)
        result["load_avg_after"][name] = round(os.getloadavg()[0], 2)  # other work skews figures
    for name, res in result["sections"].items():
        result["ratios"].update(headline_ratios(name, res))
        result["figures"].update(headline_figures(name, res))
    result["machine"]["load_avg_end"] = list(os.getloadavg())
    result["seconds"]["total"] = round(time.time() - start, 2)
    return result


def _generic_ratios(res: dict) -> dict[str, float]:
    out = {}
    if isinstance(res.get("ratios"), dict):
        out.update({k: v for k, v in res["ratios"].items() if isinstance(v, (int, float))})
    out.update({k.removeprefix("ratio_"): v for k, v in res.items()
                if k.startswith("ratio") and isinstance(v, (int, float))})
    return out


def headline_ratios(name: str, res: dict) -> dict[str, float]:
    """Ratios of a section, named `<section>: <what>` (> 1 = the first named is faster)."""
    if name == "compile":
        return {} if "speedup" not in res else {"compiled vs eager train step": res["speedup"]}
    if name == "data_wait":
        w = res.get("workers", {})
        if "0" in w and "1" in w:
            return {"1 loader worker vs 0 (train img/s)":
                    w["1"]["img_per_s"] / w["0"]["img_per_s"]}
        return {}
    return {f"{name}: {k}": v for k, v in _generic_ratios(res).items()}


def headline_figures(name: str, res: dict) -> dict[str, float]:
    """Absolute figures worth a line of their own."""
    out = {}
    if name == "pipeline":
        for loader, by_w in res.get("loaders", {}).items():
            for w, r in by_w.items():
                out[f"pipeline samples/s, {loader}, {w} worker(s), later epochs"] = \
                    r["later_epoch_sps"]
        for k, v in res.get("per_core", {}).items():
            if isinstance(v, dict):
                out[f"augmented {res['per_core']['view']} px views per CPU-second, {k}"] = \
                    v["samples_per_cpu_s"]
    elif name == "compile" and "speedup" in res:
        out["compile: first (compiling) train step, s"] = res["compiled"]["first_step_s"]
        for k in ("eager", "compiled"):
            out[f"compile: train img/s, {k}, 1 thread"] = res[k]["img_per_s"]
    elif name == "data_wait":
        for w, r in res.get("workers", {}).items():
            out[f"data wait fraction, {w} worker(s)"] = r["wait_fraction"]
    elif name == "threads":
        for r in res.get("rows", []):
            what = f"{res['recipe']}, {r['policy']} policy ({r['threads']} thread(s))"
            out[f"steps/s, {what}"] = r["steps_per_s"]
            out[f"data wait fraction, {what}"] = r["wait_fraction"]
    elif name == "inference":
        for r in res.get("rows", []):
            what = (f"{r['model']} UNet {r['precision']}" + (" channels_last" if
                    r["channels_last"] else "") + (" +TTA" if r["tta"] else ""))
            out[f"s per {res['meta']['image'][0]}x{res['meta']['image'][1]} image, {what}"] = \
                r["sec_per_image"]
    elif name == "evaluation" and "tiled" in res:
        for k in ("tiled", "whole"):
            out[f"evaluation s/image, {k}, flip TTA"] = res[k]["sec_per_image"]
            out[f"evaluation FOV dice, {k}"] = res[k]["fov_dice"]
        out["evaluation |dice difference|, whole vs tiled"] = res["dice_difference"]
    elif name == "staging":
        for k, v in res.get("variants", {}).items():
            out[f"staging MB/s, {k}"] = v["mb_s"]
    elif name == "ddp":
        for r in res.get("results", []):
            out[f"train img/s, {r['processes']} process(es) {r['precision']}"] = r["img_per_s"]
    elif name == "train_step":
        for r in res.get("rows", []):
            out[f"train img/s, batch {r['batch']} {r['precision']}"
                + (" channels_last" if r["channels_last"] else "")] = r["img_per_s"]
    return out


def format_table(result: dict) -> str:
    m = result["machine"]
    gpus = ", ".join(d["name"] for d in m["cuda_devices"]) or "no CUDA device"
    title = (f"unetdist bench{' --quick' if result['quick'] else ''}: {m['cpu']} "
             f"({m['cpus_usable']} usable CPUs), {gpus}, torch {m['torch']}; load average "
             f"{m['load_avg_start'][0]:.1f} at start, {m['load_avg_end'][0]:.1f} at the end")
    lines = [title, "", "ratios (> 1: the first named is faster)"]
    width = max([len(k) for k in (*result["ratios"], *result["figures"])] + [10])
    lines += [f"  {k:<{width}}  {v:8.2f}x" for k, v in result["ratios"].items()]
    lines += ["", "figures"]
    lines += [f"  {k:<{width}}  {v:9.3f}" for k, v in result["figures"].items()]
    skipped = {k: v["skipped"] for k, v in result["sections"].items()
               if isinstance(v, dict) and "skipped" in v}
    for k, why in skipped.items():
        lines.append(f"  {k}: skipped ({why})")
    for k, err in result["errors"].items():
        lines.append(f"  {k}: FAILED ({err})")
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items())
    lines += ["", f"time: {secs}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command


def _log(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def _write_json(path: Path, doc: dict) -> None:
    from unetdist.atomic import write_atomic

    write_atomic(path, json.dumps(doc, indent=1) + "\n")


def run_gpu(quick: bool, log: Callable[[str], None] = print) -> dict:
    """`gpu.py`'s measurements plus the machine's description, as one JSON document."""
    from unetdist.bench import gpu

    start = time.time()
    doc = gpu.run_benchmark(quick=quick, log=log)
    doc.update(format=FORMAT, quick=quick, machine=machine_info(),
               seconds=round(time.time() - start, 1))
    return doc


def _gpu_command(out: Path | None, quick: bool) -> int:
    from unetdist.bench import gpu

    doc = run_gpu(quick, log=_log)
    out = out or Path("bench-gpu.json")
    _write_json(out, doc)
    if not doc["variants"]:
        print("warning: no variant ran; nothing recorded", file=sys.stderr)
    elif quick:
        print("--quick: figures not meaningful, not recorded in docs/RESULTS.md")
    else:
        print(f"recorded in {gpu.record(doc)}")
    print(doc["profile"])
    print(gpu.results_line(doc, time.strftime("%Y-%m-%d")))
    print(f"wrote {out}")
    return 1 if doc["errors"] else 0


def bench(out: Path | None = None, *, quick: bool = False, gpu: bool = False,
          only: tuple[str, ...] | None = None) -> int:
    """`unetdist bench`: run, write the JSON, print the table; exit status 1 if a part failed."""
    if gpu:
        if only:
            from unetdist.errors import UserError

            raise UserError("--gpu runs its own variants: drop --only")
        return _gpu_command(out, quick)
    out = out or Path("bench.json")
    result = run_all(quick=quick, only=only or SECTIONS, log=_log)
    _write_json(out, result)
    print(format_table(result))
    print(f"wrote {out}")
    return 1 if result["errors"] else 0
