"""Evaluation and inference.

- `inference.py` — load a checkpoint, sliding-window prediction with TTA
- `tta.py` — TTA views (none | flip | dihedral) and their inverses
- `ensemble.py` — several checkpoints averaging their probabilities
- `evaluate.py` — exactly-once distributed scoring of a split, predictions, plots
- `metrics.py` — reducible confusion counts + score histograms, metric formulas
- `topology.py` — reducible topology counts per image: clDice, Betti errors, fragments
- `predict.py` — predict a folder of raw images
- `export.py` — safetensors / ONNX export of a trained model
- `plots.py` — curves, overlays and bar plots (PNG)
"""
