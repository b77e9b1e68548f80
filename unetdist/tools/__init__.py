"""Self-contained tools behind commands: benchmark, demo, doctor."""
