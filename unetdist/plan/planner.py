"""Fingerprint -> config: start from the DRIVE recipe, decide each field, say why.

Every decision is a `Decision` (dotted key, value, reason) printed on one line, and the
recipe's fields the plan changed are listed afterwards, so the YAML `plan` writes can be read
and edited like any experiment config. The recipe is configs/drive_unet.yaml for CUDA and
configs/drive_cpu.yaml for the CPU (shipped in unetdist/resources).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import yaml

from unetdist.data.classes import ClassTable
from unetdist.plan.fingerprint import Fingerprint
from unetdist.plan.probe import Probe

RECIPES = {"cuda": "drive_unet.yaml", "cpu": "drive_cpu.yaml"}
# Median vessel calibre (px) of the recipe's data: synthetic DRIVE twins drawn at DRIVE's
# geometry (vessel widths in DRIVE px) measure 2.5 with fingerprint.vessel_calibre.
REF_CALIBRE = 2.5
SNAP = 0.15  # a planned scale within 15% of 1 stays 1: resampling costs more than it brings
CUDA_MEMORY_SHARE = 0.5  # of the device memory for the batch (the rest: allocator, eval, spikes)
MAX_BATCH = 32
PROBE_NOTE = "median of 3 timed steps"


@dataclass(frozen=True)
class Decision:
    key: str
    value: Any
    reason: str

    def line(self) -> str:
        return f"{self.key} = {self.value}: {self.reason}"


@dataclass
class Plan:
    """The planned config (a nested dict, as YAML) and how it came about."""

    recipe: str
    config: dict
    decisions: list[Decision]

    def set(self, key: str, value: Any, reason: str) -> None:
        node = self.config
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
        self.decisions.append(Decision(key, value, reason))

    def get(self, key: str) -> Any:
        node = self.config
        for p in key.split("."):
            node = node.get(p, {}) if isinstance(node, dict) else {}
        return node


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, f"{key}.") if isinstance(v, dict) else {key: v})
    return out


def differences(recipe: dict, planned: dict) -> list[str]:
    """'key: recipe -> plan' for every field the plan changed."""
    a, b = flatten(recipe), flatten(planned)
    return [f"{k}: {a.get(k, '(unset: default)')} -> {b[k]}" for k in b if a.get(k) != b[k]]


def load_recipe(device: str) -> tuple[str, dict]:
    from unetdist.resources import resource

    path = resource("configs", RECIPES[device])
    return f"configs/{path.name}", yaml.safe_load(path.read_text())


def decide_scale(plan: Plan, fp: Fingerprint) -> float:
    calibre = fp.calibre
    if calibre <= 0:
        plan.set("data.scale", 1.0, "no vessels in the training labels to measure: native size")
        return 1.0
    raw = REF_CALIBRE / calibre
    scale = 1.0 if abs(raw - 1.0) <= SNAP else min(4.0, max(0.06, float(f"{raw:.2g}")))
    why = (f"median vessel calibre {calibre:.2f} px vs the recipe's {REF_CALIBRE} px "
           f"(factor {raw:.3f}")
    plan.set("data.scale", scale, why + (", within 15% of 1: kept native)" if scale == 1.0
                                         else "); evaluate and predict apply it too"))
    return scale


def _fit(side: float, limit: int, multiple: int) -> int:
    return max(multiple, min(limit, int(side) // multiple * multiple))


def decide_crop(plan: Plan, fp: Fingerprint, scale: float) -> None:
    side = fp.min_side * scale
    multiple = 2 ** int(plan.get("model.depth") or 4)
    recipe = int(plan.get("data.crop"))
    crop = _fit(side, recipe, multiple)
    plan.set("data.crop", crop, f"the recipe's {recipe} px" if crop == recipe else
             f"the smallest scaled image is {side:.0f} px; a multiple of 2^depth = {multiple}")
    tile = _fit(side, max(int(plan.get("eval.tile")), crop), 16)
    plan.set("eval.tile", max(tile, crop), "the training crop's context or more, within the "
             f"scaled image ({side:.0f} px)")
    plan.set("eval.overlap", plan.get("eval.overlap"),
             "the recipe's: heavy overlap + Gaussian blending hides seams on thin vessels")


def decide_batch_cpu(plan: Plan, gpus: int) -> None:
    cores = os.cpu_count() or 1
    per_proc = max(1, cores // max(gpus, 1))
    workers = min(int(plan.get("data.num_workers")), max(0, per_proc - 1))
    plan.set("data.batch_size", plan.get("data.batch_size"),
             "the recipe's: BatchNorm statistics are stable at 8 crops; a CPU step is "
             "compute-bound, so a larger batch only slows each step")
    plan.set("data.num_workers", workers, f"{cores} cores, {max(gpus, 1)} process(es): "
             "one core per process computes, the rest augment")


def decide_batch_cuda(plan: Plan, gpus: int, probe: Probe | None, memory: int | None) -> None:
    cores = os.cpu_count() or 1
    if probe is None or probe.peak_bytes_per_sample is None or not memory:
        plan.set("data.batch_size", plan.get("data.batch_size"),
                 "no CUDA device here to measure: the recipe's batch (rerun plan on the GPU "
                 "machine to size it from its memory)")
    else:
        fit = int(CUDA_MEMORY_SHARE * memory // max(probe.peak_bytes_per_sample, 1))
        batch = max(1, min(MAX_BATCH, 2 ** int(math.log2(max(fit, 1)))))
        plan.set("data.batch_size", batch,
                 f"{memory / 2**30:.0f} GiB on the device, {probe.peak_bytes_per_sample / 2**20:.0f}"
                 f" MiB per sample measured: a power of two within {CUDA_MEMORY_SHARE:.0%}, "
                 f"at most {MAX_BATCH}")
    workers = min(int(plan.get("data.num_workers")), max(1, cores // max(gpus, 1) - 1))
    plan.set("data.num_workers", workers, f"{cores} cores shared by {max(gpus, 1)} GPU "
             "process(es)")


def decide_channels(plan: Plan, fp: Fingerprint, colour: bool = False) -> None:
    """The input channels by vessel contrast; COLOUR (a multi-class table) keeps RGB."""
    if colour and not fp.is_gray:
        plan.set("data.channels", "rgb", "classes such as arteries and veins differ in colour, "
                 "not only in vessel contrast")
        plan.set("data.clahe", False, "per-channel equalisation would shift that colour balance")
    else:
        _channels_by_contrast(plan, fp)
        plan.set("data.clahe", plan.get("data.clahe"), "the recipe's local contrast equalisation")
    spread = max(s.brightness for s in fp.images) - min(s.brightness for s in fp.images)
    plan.set("data.normalize", "zscore", f"per image inside the FOV: brightness spans "
             f"{spread:.0f} gray levels between images")


def _channels_by_contrast(plan: Plan, fp: Fingerprint) -> None:
    stats = fp.channel_stats()
    if fp.is_gray:
        plan.set("data.channels", "gray", "the three channels are equal: a grayscale camera")
        return
    best = max(stats, key=lambda c: stats[c][2])
    green = stats["green"][2]
    others = ", ".join(f"{c} {v[2]:.2f}" for c, v in stats.items() if c != "green")
    if best == "green" or green >= 0.9 * stats[best][2]:
        plan.set("data.channels", "green", f"green shows the vessels best (contrast "
                 f"{green:.2f}; {others})")
    else:
        plan.set("data.channels", "rgb", f"{best} shows the vessels best (contrast "
                 f"{stats[best][2]:.2f} vs green {green:.2f}): give the network every "
                 "channel")


def decide_classes(plan: Plan, table: ClassTable) -> None:
    """A multi-class or multi-label table: the model and loss follow it (configs/av_unet.yaml
    says why). Binary tables keep the recipe's sigmoid model."""
    if table.is_binary:
        return
    if table.is_multilabel:
        labels = ", ".join(table.label_names)
        plan.set("model.num_classes", table.out_channels, f"one sigmoid output per label "
                 f"({labels}): labels may overlap")
        plan.set("loss.name", "multilabel_bce_dice", "per-label BCE + soft Dice (smp's "
                 "multilabel mode)")
        plan.set("data.crop_class_bias", 0.33, "a third of the crops centred on a rare label "
                 "combination (nnU-Net's foreground oversampling)")
        return
    names = ", ".join(table.names)
    plan.set("model.num_classes", table.out_channels, f"one softmax output per class ({names})")
    plan.set("loss.name", "ce_dice", "softmax cross-entropy + foreground soft Dice (nnU-Net's "
             "multi-class pairing)")
    if table.ignore is not None:
        plan.set("loss.ignore_index", table.ignore_index, f"the shards' ignore entry "
                 f"'{table.ignore.name}' counts in neither loss nor metrics")
    plan.set("data.crop_class_bias", 0.33, "a third of the crops centred on a rare class "
             "(nnU-Net's foreground oversampling)")


def decide_budget(plan: Plan, minutes: float | None, probe: Probe | None) -> None:
    if probe is None:
        if minutes:
            plan.set("train.max_minutes", float(minutes), "--minutes (no probe here: "
                     "max_steps stays the recipe's ceiling)")
            plan.set("optim.schedule_by", "time", "a time budget: the LR anneals when it ends")
        return
    rate = probe.seconds_per_step
    if not minutes:
        steps = int(plan.get("train.max_steps"))
        budget = float(plan.get("train.max_minutes") or 0)
        plan.set("train.max_steps", steps, f"the recipe's; {rate:.3f} s/step measured "
                 f"({probe.device}, {probe.precision}): about {steps * rate / 60:.0f} min"
                 + (f", ended earlier by the recipe's {budget:g} min budget" if budget else ""))
        return
    expected = max(1, int(minutes * 60 / rate))
    plan.set("train.max_minutes", float(minutes), "--minutes: training time, start-up and "
             "validation excluded")
    plan.set("train.max_steps", int(expected * 1.5) + 1, f"{rate:.3f} s/step measured "
             f"({probe.device}, {probe.precision}, {PROBE_NOTE}): about {expected} steps in "
             f"{minutes:g} min; 1.5x as a ceiling, the clock ends the run")
    plan.set("optim.schedule_by", "time", "a time budget: the LR anneals as the time runs out")
    every = max(1, min(int(plan.get("train.eval_every")), expected // 5))
    plan.set("train.eval_every", every, "about five validations in the budget")
    warmup = min(int(plan.get("optim.warmup_steps")), max(0, expected // 20))
    plan.set("optim.warmup_steps", warmup, "at most 5% of the expected steps")

