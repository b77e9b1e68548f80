"""The class table that travels with a model, and whether a model fits a table.

A multi-class model's outputs mean nothing without its class table (names, order, colours).
`evaluate` takes the table from the shards it scores (their manifest); `predict` and the Python
API have no shards, so the table is stored with the model:
- `classes.json` beside the weights (a best/ folder): the manifest form of the table
  (`ClassTable.to_manifest`), written by `write_classes_json` (the trainer calls it when it
  writes best/);
- the key `classes` of the safetensors metadata (the same JSON), which `export` copies, so an
  exported file is usable alone; the ONNX export puts it in the model's doc string.
Binary models store nothing: their table is always `ClassTable.binary()`. A multi-class model
stored without a table (trained before tables were stored) gets `generic_table`: classes
`class_0..class_{K-1}` in fixed colours, with a warning, rather than no output at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from unetdist.atomic import write_atomic
from unetdist.data.classes import ClassTable
from unetdist.errors import ConfigError, DataError

CLASSES_FILE = "classes.json"
META_KEY = "classes"
# distinct colours for a table nobody named: black background, then saturated hues
PALETTE = ((0, 0, 0), (230, 25, 75), (0, 130, 200), (60, 180, 75), (255, 225, 25),
           (145, 30, 180), (245, 130, 48), (70, 240, 240), (240, 50, 230), (128, 128, 0))


def classes_json(table: ClassTable) -> str:
    """The table as stored with a model (metadata value and classes.json text)."""
    return json.dumps(table.to_manifest(), sort_keys=True)


def write_classes_json(folder: str | Path, table: ClassTable) -> Path | None:
    """FOLDER/classes.json for a multi-class TABLE (crash-safe); None, nothing written, for a
    binary table (a binary best/ folder stays as it was)."""
    if table.is_binary:
        return None
    path = Path(folder) / CLASSES_FILE
    write_atomic(path, (classes_json(table) + "\n").encode())
    return path


def _parse(raw: object, where: str) -> ClassTable:
    if not isinstance(raw, str):
        raise DataError(f"{where}: the class table must be JSON text")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise DataError(f"{where}: the class table is not valid JSON ({str(e)[:120]})") from None
    return ClassTable.from_manifest(doc, where)


def stored_table(weights: str | Path, meta: dict) -> ClassTable | None:
    """The table stored with the weights file WEIGHTS (its metadata META first, then
    classes.json beside it), or None. DataError naming the place when one is malformed."""
    from unetdist.runfolder import read_run_text

    weights = Path(weights)
    if META_KEY in meta:
        return _parse(meta[META_KEY], f"{weights}: metadata")
    path = weights.parent / CLASSES_FILE
    if not path.is_file() and not path.is_symlink():
        return None
    return _parse(read_run_text(path), str(path))


def generic_table(k: int) -> ClassTable:
    """K classes named class_0..class_{K-1} (class_0 black: the background), fixed colours."""
    colours = [PALETTE[i] if i < len(PALETTE) else ((37 * i) % 256, (91 * i) % 256,
                                                    (53 * i + 128) % 256) for i in range(k)]
    return ClassTable.of([(f"class_{i}", c) for i, c in enumerate(colours)])


def check_fits(table: ClassTable, num_classes: int, what: str = "the shards' classes") -> None:
    """ConfigError (one line, both numbers) unless a model with NUM_CLASSES outputs predicts
    TABLE: a binary table takes 1 (sigmoid) or 2 (softmax) outputs, K classes K outputs."""
    if table.is_binary:
        if num_classes > 2:
            raise ConfigError(f"the model has {num_classes} outputs (model.num_classes) but "
                              f"{what} are binary ({', '.join(table.names)}): 1 or 2 outputs")
        return
    if num_classes != table.out_channels:
        raise ConfigError(f"the model has {num_classes} outputs (model.num_classes) but {what} "
                          f"{', '.join(table.names)} need {table.out_channels}")


def check_same_classes(stored: ClassTable | None, table: ClassTable, where: str) -> None:
    """DataError when the model at WHERE was trained on other classes (names or order) than
    TABLE's: its outputs would be scored as the wrong classes."""
    if stored is not None and stored.names != table.names:
        raise DataError(f"{where} was trained on the classes {', '.join(stored.names)}, the "
                        f"shards have {', '.join(table.names)} (same names, same order needed)")
