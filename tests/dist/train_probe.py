"""`unetdist train ARGS` with per-rank probes, for tests/dist/test_trainer.py.

    accelerate launch ... tests/dist/train_probe.py PROBE_DIR train --config F key=value ...

Each rank writes into PROBE_DIR:
  dtype_<rank>.txt   the dtype of the first convolution's output in a training forward pass
                     (what autocast really ran), written at the first step
  params_<rank>.pt   its parameters after training
  buffers_<rank>.pt  its buffers (BatchNorm statistics) after training
  ddp_<rank>.json    the DDP settings and the process group's collective timeout it ran with
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def main() -> int:
    probe, argv = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ.get("RANK", "0"))
    from unetdist.train import loop as trainer, setup as trainsetup
    from unetdist.cli import main as cli_main

    build, fit = trainsetup.build_training_objects, trainer.fit

    def build_with_hook(cfg, acc, *more):
        objects = build(cfg, acc, *more)  # (model, optimizer, scheduler, forward)
        model = objects[0]
        conv = next(m for m in acc.unwrap_model(model).modules()
                    if isinstance(m, torch.nn.Conv2d))

        def record(mod, inputs, out):
            if mod.training:
                (probe / f"dtype_{rank}.txt").write_text(str(out.dtype))

        conv.register_forward_hook(record)
        pg = torch.distributed.group.WORLD._get_backend(torch.device("cpu"))
        (probe / f"ddp_{rank}.json").write_text(json.dumps({
            "gradient_as_bucket_view": model.gradient_as_bucket_view,
            "broadcast_buffers": model.broadcast_buffers,
            "bucket_bytes_cap": model.bucket_bytes_cap,
            "timeout_s": pg.options._timeout.total_seconds()}))
        return objects

    def fit_and_dump(cfg):
        result = fit(cfg)
        params = {n: p.detach().clone() for n, p in result.model.named_parameters()}
        torch.save(params, probe / f"params_{rank}.pt")
        buffers = {n: b.detach().clone() for n, b in result.model.named_buffers()}
        torch.save(buffers, probe / f"buffers_{rank}.pt")
        return result

    trainsetup.build_training_objects, trainer.fit = build_with_hook, fit_and_dump
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
