"""Preprocessing and paired augmentation: the one import for trainers, evaluation and predict.

`preprocess` (in `preprocess.py`) is the same for training, evaluation and prediction;
`prepare` + `train_view` (in `augment.py`) make augmented training views from it.
"""

from unetdist.data.augment import train_view, view_matrix, view_size, warp
from unetdist.data.preprocess import Prepared, intensity, norm_stats, prepare, preprocess

__all__ = ["Prepared", "intensity", "norm_stats", "prepare", "preprocess", "train_view",
           "view_matrix", "view_size", "warp"]
