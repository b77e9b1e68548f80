"""`unetdist bench`: every throughput figure of the project, measured in one run, with ratios.

The benchmark modules live in unetdist/tools/benchmarks/ (inside the package, so `unetdist
bench` works after any install; each also runs alone with `python -m`); this module runs them
one after the other, adds the two measurements that no module owns (torch.compile's
train-step speed-up and the data-wait fraction of a training step), and aggregates everything into one JSON document with the
machine's description. A section that fails is recorded under "errors" and the others still
run. Sections run in sequence, never concurrently, so they do not compete for the cores; other
work on the machine still skews absolute figures (the load average is recorded).
"""

from __future__ import annotations

import importlib
import os
import platform
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

SECTIONS = ("pipeline", "train_step", "compile", "ddp", "data_wait", "threads", "staging",
            "inference")
FORMAT = 1


# ----------------------------------------------------------------------------- plumbing


def benchmarks_dir() -> Path:
    """benchmarks/ of the source checkout this package runs from (where RESULTS.md lives)."""
    # lazily: `unetdist --help` imports this module for SECTIONS
    from unetdist.errors import UserError

    path = Path(__file__).resolve().parents[2] / "benchmarks"
    if not path.is_dir():
        raise UserError(f"benchmarks/ not found at {path}: recording results needs a source "
                        "checkout (the benchmarks themselves run from any install)")
    return path


def load_benchmark(name: str) -> ModuleType:
    """The benchmark module unetdist.tools.benchmarks.NAME (shipped in the package)."""
    return importlib.import_module(f"unetdist.tools.benchmarks.{name}")


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
    mod = load_benchmark("bench_pipeline")
    return mod.run_benchmark(quick=quick, progress=not quick)


def bench_train_step(quick: bool) -> dict:
    mod = load_benchmark("bench_models")
    if quick:
        return mod.run_benchmark(64, 1, warmup=1, batches=(2,), width=8, progress=False)
    return mod.run_benchmark(256, 3, warmup=1, batches=(2,), width=64, progress=True)


def bench_ddp(quick: bool) -> dict:
    return load_benchmark("bench_train").run_benchmark(quick=quick)


def bench_staging(quick: bool) -> dict:
    mod = load_benchmark("bench_stage")
    with tempfile.TemporaryDirectory(prefix="unetdist-bench-") as d:
        if quick:
            return mod.run_benchmark(8, d, rounds=1)
        return mod.run_benchmark(200, d, rounds=3)


def bench_threads(quick: bool) -> dict:
    return load_benchmark("bench_threads").run_benchmark(quick=quick)


def bench_inference(quick: bool) -> dict:
    return load_benchmark("bench_inference").run_benchmark(quick=quick, progress=not quick)


def _train_objects(width: int, depth: int, compile_: bool = False):
    """The demo's model family, loss and optimizer, built by the product's own builders."""
    import torch

    from unetdist.config import LossConfig, ModelConfig, OptimConfig

    # lazily: `unetdist --help` imports this module for SECTIONS
    from unetdist.distributed import pick_device
    from unetdist.models.registry import apply_runtime_options, build_model
    from unetdist.train.losses import build_loss
    from unetdist.train.optim import build_optimizer

    torch.manual_seed(0)
    mcfg = ModelConfig(in_channels=1, width=width, depth=depth, compile=compile_)
    model = apply_runtime_options(build_model(mcfg), mcfg, distributed=False)
    device = pick_device()
    model = model.to(device).train()
    return model, build_loss(LossConfig()), build_optimizer(model.parameters(), OptimConfig()), device


def _train_step(model, loss_fn, opt, batch: dict, device) -> None:
    import torch

    x, y, f = (batch[k].to(device, non_blocking=True) for k in ("image", "label", "fov"))
    loss = loss_fn(model(x), y, f)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_compile(quick: bool) -> dict:
    """Train-step time of the demo UNet, eager vs `model.compile=true` (inductor).

    One torch thread (as each demo DDP process has: OpenMP spin-waits make multi-threaded
    figures erratic on a busy machine); the two models take steps in turn, median per model.
    """
    if quick:
        return {"skipped": "compiling takes tens of seconds; run without --quick"}
    import torch

    size, batch, steps = 96, 8, 20
    g = torch.Generator().manual_seed(0)
    data = {"image": torch.randn(batch, 1, size, size, generator=g),
            "label": (torch.rand(batch, 1, size, size, generator=g) > 0.88).float(),
            "fov": torch.ones(batch, 1, size, size)}
    out = {"size": size, "batch": batch, "steps": steps, "model": "unet width 16 depth 3",
           "torch_threads": 1}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {name: _train_objects(16, 3, compile_=flag)
                for name, flag in (("eager", False), ("compiled", True))}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for i in range(steps + 1):
            for name, (model, loss_fn, opt, device) in runs.items():
                t0 = time.perf_counter()
                _train_step(model, loss_fn, opt, data, device)  # step 0 compiles
                times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    for name, t in times.items():
        med = statistics.median(t[1:])
        out[name] = {"first_step_s": t[0], "sec_per_step": med, "img_per_s": batch / med}
    out["speedup"] = out["compiled"]["img_per_s"] / out["eager"]["img_per_s"]
    return out


def _wait_fraction(data_cfg, shard_dir: str, objects, steps: int, warmup: int) -> dict:
    """Seconds blocked in next(batches) vs computing, over `steps` after `warmup` steps."""
    # lazily: `unetdist --help` imports this module for SECTIONS
    from unetdist.data.pipeline import train_batches

    model, loss_fn, opt, device = objects
    stream = iter(train_batches(data_cfg, shard_dir, seed=0, rank=0, world_size=1, epoch=0))
    wait = compute = 0.0
    try:
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            batch = next(stream)
            t1 = time.perf_counter()
            _train_step(model, loss_fn, opt, batch, device)
            if i >= warmup:
                wait, compute = wait + t1 - t0, compute + time.perf_counter() - t1
    finally:
        stream.close()
    return {"wait_s": wait, "compute_s": compute, "wait_fraction": wait / (wait + compute),
            "img_per_s": steps * data_cfg.batch_size / (wait + compute)}


def bench_data_wait(quick: bool) -> dict:
    """Fraction of a training step spent waiting for the webdataset pipeline, per worker count.

    The demo's setting (one training process with one torch thread, as each of the demo's two
    DDP processes has; crops of synthetic fundus images with augmentation). The cache is warmed
    and the workers started during the untimed warm-up steps.
    """
    import torch

    from unetdist.config import DataConfig

    # lazily: `unetdist --help` imports this module for SECTIONS
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    size, n, crop, batch, width = (64, 6, 48, 4, 8) if quick else (256, 20, 96, 8, 16)
    steps, warmup = (4, 1) if quick else (30, 3)
    workers = (0, 1) if quick else (0, 1, 2)
    threads = torch.get_num_threads()
    out = {"image": size, "crop": crop, "batch": batch, "model": f"unet width {width} depth 3",
           "steps": steps, "torch_threads": 1, "workers": {}}
    with tempfile.TemporaryDirectory(prefix="unetdist-bench-") as d:
        raw = write_synthetic(Path(d) / "raw", n_train=n, n_test=0, size=(size, size),
                              progress=False)
        shard_dataset(raw, Path(d) / "shards", split_val=0.0, progress=False)
        torch.set_num_threads(1)
        try:
            for w in workers:
                cfg = DataConfig(crop=crop, batch_size=batch, num_workers=w,
                                 steps_per_epoch=steps + warmup)
                objects = _train_objects(width, 3)
                out["workers"][str(w)] = _wait_fraction(cfg, str(Path(d) / "shards"), objects,
                                                        steps, warmup)
        finally:
            torch.set_num_threads(threads)
    return out


RUNNERS: dict[str, Callable[[bool], dict]] = {
    "pipeline": bench_pipeline, "train_step": bench_train_step, "compile": bench_compile,
    "ddp": bench_ddp, "data_wait": bench_data_wait, "threads": bench_threads,
    "staging": bench_staging,
    "inference": bench_inference,
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
            out[f"train img/s, {r['threads']} thread(s) + {res['workers']} loader worker(s)"] = \
                r["img_per_s"]
    elif name == "inference":
        for r in res.get("rows", []):
            what = (f"{r['model']} UNet {r['precision']}" + (" channels_last" if
                    r["channels_last"] else "") + (" +TTA" if r["tta"] else ""))
            out[f"s per {res['meta']['image'][0]}x{res['meta']['image'][1]} image, {what}"] = \
                r["sec_per_image"]
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
