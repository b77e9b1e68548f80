"""Evaluation and inference.

- `inference.py` — load a checkpoint, sliding-window prediction with TTA
- `evaluate.py` — exactly-once distributed scoring of a split, predictions, plots
- `metrics.py` — reducible confusion counts + score histograms, metric formulas
- `predict.py` — predict a folder of raw images
- `export.py` — safetensors / ONNX export of a trained model
- `plots.py` — curves, overlays and bar plots (PNG)
"""
