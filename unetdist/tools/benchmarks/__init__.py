"""Benchmark modules behind `unetdist bench`; each also runs alone with
`python -m unetdist.tools.benchmarks.<name>`. Recorded results: benchmarks/RESULTS.md.

- `bench_pipeline.py` — shard decoding, augmentation and loader throughput
- `bench_train.py` — training step img/s: models, precision, channels_last, DDP processes
- `bench_models.py` — seed UNet forward+backward: fp32 vs bf16, channels_last
- `bench_inference.py` — sliding-window inference: precision, channels_last, TTA
- `bench_stage.py` — staging copy+hash throughput vs a plain copy
- `bench_threads.py` — torch threads vs loader workers on this machine's cores
- `bench_gpu.py` — `unetdist bench --gpu`: per-GPU img/s, MFU, data wait, syncs, scaling
"""
