"""Self-contained tools behind commands.

- `bench.py` — `unetdist bench`: the benchmark runner and its table
- `gpu_bench.py` — `unetdist bench --gpu`: runs the bench_gpu benchmark module, records a results row
- `benchmarks/` — the benchmark modules `bench` runs (each also runs alone with `python -m`)
- `syncs.py` — counts a step's host syncs (CUDA sync debug mode, or a CPU fake)
- `demo.py` — `unetdist demo`: synth -> shard -> stage -> DDP train -> evaluate -> report
- `doctor.py` — `unetdist doctor`: what this machine can run
- `sweep.py` — `unetdist sweep`: grid/random trials into run folders, summary table
- `sweep_spec.py` — the sweep spec, typed and checked field by field before any trial
"""
