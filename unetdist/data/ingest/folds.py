"""K-fold assignment for `shard --folds K [--fold-seed S]`.

Folds partition the training samples (all labelled samples for a layout without an official
split, such as STARE): a seeded permutation of the ids sorted by name, dealt round-robin, so
fold sizes differ by at most one and the assignment depends only on (ids, K, S), not on file
order. The writer then gives every fold its own training shards, which is what lets
`data.fold=i` pick whole shards.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from unetdist.data.ingest.records import RawSample
from unetdist.errors import UserError


def fold_ids(ids: list[str], k: int, seed: int) -> list[list[str]]:
    """`ids` dealt into `k` folds, each sorted."""
    ordered = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    folds: list[list[str]] = [[] for _ in range(k)]
    for j, i in enumerate(perm):
        folds[j % k].append(ordered[int(i)])
    return [sorted(f) for f in folds]


def assign_folds(samples: list[RawSample], k: int, seed: int, pool_all: bool
                 ) -> tuple[list[RawSample], list[list[str]]]:
    """(samples, ids per fold); with `pool_all` every sample joins the training pool first."""
    if k < 2:
        raise UserError(f"--folds must be >= 2, got {k}")
    if pool_all:
        samples = [replace(s, split="train") for s in samples]
    train = [s.id for s in samples if s.split == "train"]
    if len(train) < k:
        raise UserError(f"--folds {k} needs at least {k} training samples, found {len(train)}")
    return samples, fold_ids(train, k, seed)
