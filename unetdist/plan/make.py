"""`unetdist plan`: fingerprint the training split, decide, probe, write the config YAML.

The printed order is the reading order: the fingerprint, one line per decision with its reason,
the fields that differ from the recipe, and the written path last.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from unetdist.atomic import write_atomic
from unetdist.config import config_from_dict
from unetdist.data.manifest import class_table, read_manifest
from unetdist.errors import UserError
from unetdist.plan.fingerprint import Fingerprint, fingerprint
from unetdist.plan.planner import (
    Decision,
    Plan,
    decide_batch_cpu,
    decide_batch_cuda,
    decide_budget,
    decide_channels,
    decide_classes,
    decide_crop,
    decide_scale,
    differences,
    load_recipe,
)
from unetdist.plan.probe import Probe, measure_step

TASKS = ("vessels",)  # binary vessel segmentation; more label sets come with their recipes
DEVICES = ("cpu", "cuda")


def _cuda_memory() -> int | None:
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def _probe(plan: Plan, device: str, batch_size: int | None = None) -> Probe | None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return None
    return measure_step(config_from_dict(plan.config), device, batch_size=batch_size)


def check_options(device: str, gpus: int, minutes: float | None, task: str) -> None:
    if device not in DEVICES:
        raise UserError(f"--device must be one of {'|'.join(DEVICES)}, got {device!r}")
    if task not in TASKS:
        raise UserError(f"--task must be one of {'|'.join(TASKS)}, got {task!r}")
    if gpus < 1:
        raise UserError(f"--gpus must be >= 1, got {gpus}")
    if minutes is not None and minutes <= 0:
        raise UserError(f"--minutes must be > 0, got {minutes:g}")


def make_plan(fp: Fingerprint, *, device: str = "cpu", gpus: int = 1,
              minutes: float | None = None, task: str = "vessels",
              probe: bool = True) -> tuple[Plan, dict]:
    """The planned config for FP's shards, and the recipe it started from (both as dicts)."""
    check_options(device, gpus, minutes, task)
    recipe_name, recipe = load_recipe(device)
    plan = Plan(recipe_name, copy.deepcopy(recipe), [])
    plan.set("data.shared_dir", str(Path(fp.root).absolute()), "the fingerprinted shards")
    plan.set("data.local_dir", None, "read the shards where they are (set a node-local folder "
             "to stage a copy per node)")
    plan.set("data.stage", False, "nothing to stage without data.local_dir")
    scale = decide_scale(plan, fp)
    table = class_table(read_manifest(fp.root))
    decide_channels(plan, fp, colour=not table.is_binary)
    decide_classes(plan, table)
    decide_crop(plan, fp, scale)
    measured = None
    if device == "cpu":
        decide_batch_cpu(plan, gpus)
        measured = _probe(plan, device) if probe else None
    else:
        first = _probe(plan, device, batch_size=2) if probe else None
        decide_batch_cuda(plan, gpus, first, _cuda_memory())
        measured = _probe(plan, device) if first is not None else None
    decide_budget(plan, minutes, measured)
    if device == "cuda" and gpus > 1:
        plan.decisions.append(_global_batch(plan, gpus))
    config_from_dict(plan.config)  # the plan must load as it is written (ConfigError if not)
    return plan, recipe


def _global_batch(plan: Plan, gpus: int) -> Decision:
    b = int(plan.get("data.batch_size"))
    return Decision("global batch", gpus * b, f"{gpus} GPUs x {b} per process; launch with "
                    f"`accelerate launch --multi_gpu --num_processes {gpus} -m unetdist train`")


def plan_yaml(plan: Plan, command: str) -> str:
    head = [f"# planned by `{command}` from {plan.recipe}", "# decisions:"]
    head += [f"#   {d.line()}" for d in plan.decisions]
    return "\n".join(head) + "\n" + yaml.safe_dump(plan.config, sort_keys=False)


def default_out(root: str) -> Path:
    return Path.cwd() / f"plan-{Path(str(root).rstrip('/')).name}.yaml"


def run_plan(root: str, *, device: str = "cpu", gpus: int = 1, minutes: float | None = None,
             task: str = "vessels", out: str | None = None) -> Path:
    """Print the fingerprint and every decision, write the config; returns its path."""
    check_options(device, gpus, minutes, task)
    fp = fingerprint(root)
    for line in fp.lines():
        print(line)
    plan, recipe = make_plan(fp, device=device, gpus=gpus, minutes=minutes, task=task)
    print(f"plan (from {plan.recipe}, --device {device}, --gpus {gpus}"
          + (f", --minutes {minutes:g})" if minutes else ")"))
    for d in plan.decisions:
        print(f"  {d.line()}")
    changed = differences(recipe, plan.config)
    print(f"differences from {plan.recipe}: {len(changed)}")
    for line in changed:
        print(f"  {line}")
    path = Path(out) if out else default_out(root)
    command = f"unetdist plan {root} --device {device} --gpus {gpus}" + (
        f" --minutes {minutes:g}" if minutes else "")
    write_atomic(path, plan_yaml(plan, command))
    print(f"wrote {path}")
    return path
