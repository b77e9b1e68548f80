"""Evaluation and inference.

- `inference.py` — load a checkpoint; whole-image / sliding-window prediction with batched
  TTA views under one `InferencePolicy` (device, autocast, memory format)
- `windows.py` — window geometry: whole-image padding, tiles, Gaussian weights, forward counts
- `tta.py` — TTA views (none | flip | dihedral) and their inverses
- `ensemble.py` — several checkpoints averaging their probabilities
- `evaluate.py` — `evaluate_checkpoints` (the evaluate job) and exactly-once distributed
  scoring of a split (`evaluate_split`)
- `evaluate_classes.py` — the multi-class form of `evaluate_split`: class probabilities,
  one K×K confusion all-reduced once, A/V numbers, its summary line
- `evaluate_labels.py` — the multi-label form of `evaluate_split`: label probabilities, each
  label scored as a binary mask at its threshold, all-reduced once, its summary line
- `scoring.py` — what the binary and multi-class scoring share: timed prediction, the cost
  estimate, the barrier, original sizes
- `outputs.py` — the evaluation's output folder (one per data + split, never overwriting other
  results), predictions, metrics.json, per_image.csv, plots
- `class_outputs.py` — a multi-class model's files: colour-coded predictions, per-class
  probability maps, overlays, metrics.json, per_image.csv and plots
- `label_outputs.py` — a multi-label model's files: per-label masks and probability maps, a
  colour composite, overlays, metrics.json, per_image.csv and plots
- `classes_io.py` — the class table stored with a model (classes.json, safetensors metadata)
  and whether a model's outputs fit a table
- `metrics.py` — reducible confusion counts + score histograms, metric formulas
- `multiclass.py` — reducible K×K confusion + one-vs-rest histograms (per-class metrics, mean
  IoU, A/V numbers) and per-channel multi-label counts
- `topology.py` — reducible topology counts per image: clDice, Betti errors, fragments
- `predict.py` — `predict_images` (the predict job): predict a folder of raw images
- `image_files.py` — any image file a user gives `predict` or the API, decoded from its bytes
- `threshold.py` — the threshold binary masks use (one per label for multi-label masks):
  eval.threshold, or the one `auto` chose on validation (stored with the best model)
- `api.py` — the Python API (`unetdist.load_model`): `predict`'s loading and per-image path
- `export.py` — safetensors / ONNX export of a trained model
- `plots.py` — curves, overlays and bar plots (PNG)
"""
