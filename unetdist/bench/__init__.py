"""`unetdist bench`: every throughput figure of the project, measured by the trainer's own code.

The sections measure what training runs: the trainer's stream (`unetdist.data.pipeline.
run_batches`) and the trainer's step (`unetdist.train.step.train_step`). Recorded results:
docs/RESULTS.md. Each section module also runs alone with `python -m unetdist.bench.<name>`.

- `runner.py` — `unetdist bench`: runs the sections in order, machine info, ratios, the table;
  `--gpu`: runs `gpu.py`, writes its JSON, records a results row
- `trainer.py` — builds the trainer's own run (model, optimizer, scheduler, loss) for a bench
  section and times `train_step` on batches from `run_batches`
- `pipeline.py` — loader throughput (`run_batches` vs a seed-style loader), augmentation per core
- `train.py` — the `train_step`, `compile` and `data_wait` sections: the trainer's step per
  precision and layout, eager vs compiled, time blocked on the stream per loader worker count
- `models.py` — seed UNet forward+backward alone: fp32 vs bf16, channels_last
- `ddp.py` — the trainer's step img/s with 1 vs 2 DDP processes, fp32 vs bf16
- `staging.py` — staging copy+hash throughput vs a plain copy
- `inference.py` — sliding-window inference: precision, channels_last, TTA
- `evaluation.py` — evaluation s/image on DRIVE-size images with the CPU recipe's trained
  model and flip TTA: tiled (eval.tile 256) vs whole image (eval.tile 0), at equal Dice
- `threads.py` — torch threads vs loader workers on this machine's cores
- `gpu.py` — `unetdist bench --gpu`: per-GPU img/s, MFU, data wait, syncs, scaling; the
  results row for docs/RESULTS.md
- `syncs.py` — counts a step's host syncs (CUDA sync debug mode, or a CPU fake)
"""
