"""The model's outputs and the loss follow the shards' class table.

A multi-class or multi-label shard folder names what the model must predict. A config that
leaves the model binary (`model.num_classes: 1` with a sigmoid loss, the defaults) takes its
outputs and loss from the table (`adopt_classes`, said in one line); a config that sets them
itself must fit the table (`check_classes`), since multi-class shards trained with a binary
sigmoid loss would silently learn the vessel union.
"""

from __future__ import annotations

from dataclasses import replace

from unetdist.config import RunConfig
from unetdist.config.names import loss_output
from unetdist.data.classes import ClassTable
from unetdist.data.manifest import class_table
from unetdist.data.preprocess import MAX_CLASS
from unetdist.errors import ConfigError, DataError

MULTICLASS_LOSSES = ("ce", "ce_dice")  # softmax over the table's classes, ignore-aware
MULTILABEL_LOSS = "multilabel_bce_dice"  # one sigmoid per label channel


def adopt_classes(cfg: RunConfig, manifest: dict) -> tuple[RunConfig, str | None]:
    """CFG with model.num_classes, loss.name and loss.ignore_index from the shards' table when
    CFG is still binary (one output, a sigmoid loss); (cfg, None) when nothing changes, else
    (new cfg, the line saying what it took)."""
    table = class_table(manifest)
    binary = cfg.model.num_classes == 1 and loss_output(cfg.loss.name) == "sigmoid"
    if table.is_binary or not binary or cfg.loss.class_weights:
        return cfg, None
    if table.is_multilabel:
        name = MULTILABEL_LOSS
    else:  # nnU-Net's pairing unless the binary loss had no Dice term
        name = "ce" if cfg.loss.name == "bce" else "ce_dice"
    cfg = replace(cfg, model=replace(cfg.model, num_classes=table.out_channels),
                  loss=replace(cfg.loss, name=name, ignore_index=table.ignore_index))
    ignore = (f", loss.ignore_index={table.ignore_index}" if table.ignore_index is not None
              else "")
    return cfg, (f"model.num_classes={table.out_channels}, loss.name={name}{ignore}: from the "
                 f"shards' {table.describe()}")


def check_classes(cfg: RunConfig, manifest: dict) -> None:
    """ConfigError (one line naming the field and the value to use) unless the model and loss
    fit the shards' class table. Binary tables: nothing to check."""
    table = class_table(manifest)
    if table.is_binary:
        return
    if not table.is_multilabel and table.num_classes > MAX_CLASS + 1:
        raise DataError(f"training reads multiclass shards of at most {MAX_CLASS + 1} classes; "
                        f"these have {table.describe()}")
    k, loss = cfg.model.num_classes, cfg.loss
    names = _names(table)
    if k != table.out_channels:
        raise ConfigError(f"model.num_classes must be {table.out_channels} for {names}, got {k}")
    losses = (MULTILABEL_LOSS,) if table.is_multilabel else MULTICLASS_LOSSES
    if loss.name not in losses:
        raise ConfigError(f"loss.name must be {' or '.join(losses)} for {names}, "
                          f"got {loss.name!r}")
    if loss.ignore_index != table.ignore_index:
        what = (f"the shards' ignore entry {table.ignore.name!r}" if table.ignore is not None
                else names + " (no ignore entry)")
        raise ConfigError(f"loss.ignore_index must be {table.ignore_index} for {what}, "
                          f"got {loss.ignore_index}")


def _names(table: ClassTable) -> str:
    if table.is_multilabel:
        return f"the shards' labels {', '.join(table.label_names)}"
    return f"the shards' classes {', '.join(table.names)}"
