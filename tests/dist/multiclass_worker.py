"""Run by tests/dist/test_multiclass_dist.py under `accelerate launch` (2 CPU processes).

Each rank scores its own disjoint share of fixed seeded image sets (rank r: images r, r+W, ...),
reduces once, and rank 0 writes the computed metrics to OUT/<set>.json.
Usage: multiclass_worker.py OUT
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

K, IGNORE = 4, 255
# name -> (seed, number of images); "one" leaves rank 1 without an image
SETS = {"five": (11, 5), "one": (12, 1)}


def make_images(seed: int, n: int) -> list[tuple[np.ndarray, ...]]:
    """N (softmax probs (K,H,W), labels (H,W) with ~8% IGNORE, FOV disc, multi-label (2,H,W))
    images of varied small sizes; classes 0 background, 1 artery, 2 vein, 3 crossing."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 24 + 4 * i, 30 - 2 * i
        lab = rng.choice(K, size=(h, w), p=[0.55, 0.2, 0.2, 0.05])
        logits = rng.normal(size=(K, h, w)) + 1.6 * (lab[None] == np.arange(K)[:, None, None])
        prob = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
        lab = np.where(rng.random((h, w)) < 0.08, IGNORE, lab)
        yy, xx = np.mgrid[:h, :w]
        fov = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.47 * min(h, w)) ** 2
        multi = np.stack([lab == 1, lab == 2]) | (lab == 3)[None]  # crossing: artery and vein
        out.append((prob.astype(np.float32), lab.astype(np.int64), fov, multi))
    return out


def score(images) -> dict:
    """States filled with IMAGES (this rank's share), reduced once each: class, multi-label."""
    from unetdist.eval.multiclass import ClassMetricState, MultiLabelMetricState

    classes = ClassMetricState(K, ignore_index=IGNORE, bins=200)
    labels = MultiLabelMetricState(2, bins=200, label_names=["artery", "vein"])
    for prob, lab, fov, multi in images:
        classes.update(torch.from_numpy(prob), torch.from_numpy(lab), torch.from_numpy(fov))
        labels.update(torch.from_numpy(prob[1:3]), torch.from_numpy(multi),
                      torch.from_numpy(fov))
    return {"classes": classes, "labels": labels}


def result(states: dict) -> dict:
    from unetdist.eval.multiclass import av_metrics

    out = states["classes"].compute(["background", "artery", "vein", "crossing"])
    return {"classes": out, "labels": states["labels"].compute(),
            "av": av_metrics(out["confusion"], artery=1, vein=2, crossing=3)}


def main() -> None:
    from unetdist.distributed import make_accelerator

    out = sys.argv[1]
    acc = make_accelerator("no")
    rank, world = acc.process_index, acc.num_processes
    for name, (seed, n) in SETS.items():
        states = score(make_images(seed, n)[rank::world])
        states["classes"].reduce(acc)  # the accelerator's device
        states["labels"].reduce()  # collective_device()
        if rank == 0:
            tmp = os.path.join(out, f".{name}.json")
            with open(tmp, "w") as f:
                json.dump({"world": world, **result(states)}, f)
            os.replace(tmp, os.path.join(out, f"{name}.json"))
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
