"""Run by tests/dist/test_pipeline_dist.py under `accelerate launch` (2 CPU processes).

Each rank reads eval shares and training batches and writes what it saw to OUT/rank<r>.json.
Usage: pipeline_worker.py OUT SHARD_DIR [SHARD_DIR ...]
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from itertools import islice

import torch
from accelerate import Accelerator

from unetdist.data.pipeline import eval_samples, run_batches
from unetdist.config import DataConfig


def _digest(batch: dict) -> str:
    h = hashlib.sha256()
    for k in ("image", "label", "fov"):
        h.update(batch[k].numpy().tobytes())
    return h.hexdigest()


def _train(cfg: DataConfig, shard_dir: str, rank: int, world: int, start: int) -> list:
    """Epoch 1 from step START, read from the trainer's stream as a resumed trainer would."""
    steps = cfg.steps_per_epoch
    stream = run_batches(cfg, shard_dir, seed=3, rank=rank, world_size=world,
                         start_batch=steps + start)
    out = [{"key": b["key"], "digest": _digest(b), "shape": list(b["image"].shape),
            "fov_sum": float(b["fov"].sum())} for b in islice(stream, steps - start)]
    stream.close()  # stops the workers
    return out


def main() -> None:
    out, dirs = sys.argv[1], sys.argv[2:]
    acc = Accelerator(cpu=not torch.cuda.is_available())
    rank, world = acc.process_index, acc.num_processes
    cfg = DataConfig(crop=32, batch_size=2, num_workers=2, steps_per_epoch=5, shuffle_buffer=4,
                     cache=True)
    result = {"world": world, "eval": {}}
    for d in dirs:  # unequal shares, some empty: no collectives inside, nothing may block
        result["eval"][d] = [s["key"] for s in eval_samples(cfg, d, "test", rank=rank,
                                                            world_size=world)]
    result["train"] = _train(cfg, dirs[0], rank, world, 0)
    result["resumed"] = _train(cfg, dirs[0], rank, world, 2)
    acc.wait_for_everyone()  # both ranks reach the end of their (uneven) streams
    tmp = os.path.join(out, f".rank{rank}.json")
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, os.path.join(out, f"rank{rank}.json"))
    acc.end_training()


if __name__ == "__main__":
    main()
