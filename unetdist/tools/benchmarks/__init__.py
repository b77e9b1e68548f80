"""Benchmark modules behind `unetdist bench`; each also runs alone with
`python -m unetdist.tools.benchmarks.<name>`. Recorded results: benchmarks/RESULTS.md."""
