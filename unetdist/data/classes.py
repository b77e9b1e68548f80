"""The class table of a dataset: class names, their indices and display colours, an ignore entry.

A table is what a label map means. Class `i` is the i-th entry (index = position, 0 is the
background); the optional ignore entry marks pixels that no loss or metric counts (RITE's
"uncertain" white), and its index in label maps is IGNORE_INDEX (255: the one uint8 value no
class can take, since a table holds at most MAX_CLASSES = 255 classes).

Two modes, as in smp and nnU-Net:
- "multiclass": one index map per image, every pixel one class (softmax over K classes);
- "multilabel": one binary channel per non-background class, overlaps allowed (disc and cup).
  Entry 0 names the "no label" background. There is no index map, so no ignore entry either.
  In memory a multilabel label map is a bit mask: label c (entry c, c >= 1) is bit c-1. At most
  MAX_LABELS labels, so a mask stays below 64 and never meets the training pack's ignore value.
A 2-class table is binary in either mode (one sigmoid channel): `ClassTable.binary()` is the
table of every dataset written before tables existed (background, vessel).

Spellings a user writes (ConfigError naming the entry when wrong):
- command line: `background=0,0,0 artery=255,0,0 vein=0,0,255`, and at most one ignore entry
  written with an `:ignore` suffix, anywhere in the list: `uncertain=255,255,255:ignore`;
- YAML file: a list of `{name: artery, colour: [255, 0, 0]}` (`color` and "255,0,0" accepted),
  the ignore entry with `ignore: true`.
In manifest.json (`to_manifest`): {"mode", "entries": [{"name", "index", "colour"}, ...],
"ignore": {"name", "colour", "index"} or null}, read back by `from_manifest`, which types every
member first: shard folders are written by others (DataError naming the field).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetdist.errors import ConfigError, DataError

IGNORE_INDEX = 255
MAX_CLASSES = 255  # indices 0..254; 255 is the ignore index
MAX_LABELS = 6  # multilabel channels: bit masks 0..63 (the training pack keeps 7 bits, 127 = ignore)
MODES = ("multiclass", "multilabel")
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")  # becomes file names and metric keys
_IGNORE_SUFFIX = ":ignore"
_BYTE_RE = re.compile(r"[0-9]{1,3}")  # not str.isdigit: that accepts "²", which int() refuses

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class ClassEntry:
    name: str
    index: int  # its position in the table
    colour: Colour  # RGB, 0..255


@dataclass(frozen=True)
class IgnoreEntry:
    name: str
    colour: Colour  # pixels of this colour in a colour mask get IGNORE_INDEX


def _short(v: object) -> str:
    """repr cut short: a value from a hostile file may be megabytes long."""
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _is_colour(c: object) -> bool:
    return (isinstance(c, tuple) and len(c) == 3
            and all(type(v) is int and 0 <= v <= 255 for v in c))


def _entry_problem(name: object, colour: object) -> str | None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        return (f"class name {_short(name)} is not a plain name (a letter, then up to 31 "
                "letters, digits, _ or -)")
    if not _is_colour(colour):
        return f"class {name!r}: colour must be 3 integers 0..255, got {_short(colour)}"
    return None


def _problem(t: ClassTable) -> str | None:
    """What is wrong with table T, in one line naming the entry (None: nothing)."""
    if t.mode not in MODES:
        return f"class table mode must be one of {', '.join(MODES)}, got {_short(t.mode)}"
    if not 2 <= len(t.entries) <= MAX_CLASSES:
        return (f"a class table needs 2 to {MAX_CLASSES} classes (background and at least "
                f"one more), got {len(t.entries)}")
    named = [*((e.name, e.colour) for e in t.entries),
             *([(t.ignore.name, t.ignore.colour)] if t.ignore is not None else [])]
    for i, e in enumerate(t.entries):
        if e.index != i:
            return f"class {e.name!r} has index {_short(e.index)}, expected its position {i}"
    seen_names: set[str] = set()
    seen_colours: dict[Colour, str] = {}
    for name, colour in named:
        if problem := _entry_problem(name, colour):
            return problem
        if name in seen_names:
            return f"class name {name!r} appears twice"
        if colour in seen_colours:
            return (f"classes {seen_colours[colour]!r} and {name!r} have the same colour "
                    f"{','.join(map(str, colour))}")
        seen_names.add(name)
        seen_colours[colour] = name
    if t.ignore is not None and t.mode == "multilabel":
        return (f"ignore entry {t.ignore.name!r}: a multilabel table has no ignore entry "
                "(its labels are binary channels, not an index map)")
    if t.mode == "multilabel" and len(t.entries) - 1 > MAX_LABELS:
        return (f"a multilabel table holds at most {MAX_LABELS} labels besides the background, "
                f"got {len(t.entries) - 1}")
    return None


@dataclass(frozen=True)
class ClassTable:
    """What the values of a dataset's label maps mean (module docstring)."""

    entries: tuple[ClassEntry, ...]
    ignore: IgnoreEntry | None = None
    mode: str = "multiclass"

    def __post_init__(self) -> None:
        if not isinstance(self.entries, tuple):
            raise ConfigError(f"class table entries must be a tuple, got {_short(self.entries)}")
        if problem := _problem(self):
            raise ConfigError(problem)

    # ----------------------------------------------------------------------------- builders

    @classmethod
    def of(cls, classes: Sequence[tuple[str, Colour]], ignore: tuple[str, Colour] | None = None,
           mode: str = "multiclass") -> ClassTable:
        """The table of CLASSES [(name, colour), ...] in index order (ConfigError if invalid)."""
        entries = tuple(ClassEntry(n, i, c) for i, (n, c) in enumerate(classes))
        return cls(entries, IgnoreEntry(*ignore) if ignore is not None else None, mode)

    @classmethod
    def binary(cls) -> ClassTable:
        """background (black) = 0, vessel (white) = 1: every binary dataset's table."""
        return cls.of([("background", (0, 0, 0)), ("vessel", (255, 255, 255))])

    @classmethod
    def from_specs(cls, specs: Sequence[str], mode: str = "multiclass",
                   where: str = "--classes") -> ClassTable:
        """The table of command-line entries NAME=R,G,B (one with `:ignore`); ConfigError
        'WHERE: ...' naming the entry when one is malformed or the table is invalid."""
        classes: list[tuple[str, Colour]] = []
        ignore: list[tuple[str, Colour]] = []
        for spec in specs:
            name, sep, rest = spec.partition("=")
            is_ignore = rest.endswith(_IGNORE_SUFFIX)
            colour = _parse_colour(rest[:-len(_IGNORE_SUFFIX)] if is_ignore else rest)
            if not sep or colour is None or not _NAME_RE.fullmatch(name.strip()):
                raise ConfigError(f"{where}: entry {_short(spec)} must be NAME=R,G,B (NAME: a "
                                  "letter, then letters, digits, _ or -; R,G,B: 0..255; "
                                  f"NAME=R,G,B{_IGNORE_SUFFIX} for the ignore entry)")
            (ignore if is_ignore else classes).append((name.strip(), colour))
        return _build(classes, ignore, mode, where)

    @classmethod
    def from_yaml(cls, path: str | Path, mode: str = "multiclass") -> ClassTable:
        """The table in YAML file PATH: a list of {name, colour, ignore?} (ConfigError naming
        PATH and the entry)."""
        from unetdist.yamlio import load_yaml

        doc = load_yaml(path, "class table")
        if not isinstance(doc, list):
            raise ConfigError(f"{path}: a class table is a list of {{name, colour}} entries, "
                              f"got {type(doc).__name__}")
        classes: list[tuple[str, Colour]] = []
        ignore: list[tuple[str, Colour]] = []
        for i, item in enumerate(doc):
            name, colour, is_ignore = _yaml_entry(item, f"{path}: entry {i + 1}")
            (ignore if is_ignore else classes).append((name, colour))
        return _build(classes, ignore, mode, str(path))

    # ----------------------------------------------------------------------------- manifest

    def to_manifest(self) -> dict:
        """The JSON form stored under "classes" in manifest.json."""
        ignore = None if self.ignore is None else {
            "name": self.ignore.name, "colour": list(self.ignore.colour), "index": IGNORE_INDEX}
        return {"mode": self.mode, "ignore": ignore,
                "entries": [{"name": e.name, "index": e.index, "colour": list(e.colour)}
                            for e in self.entries]}

    @classmethod
    def from_manifest(cls, d: object, where: str = "manifest") -> ClassTable:
        """The table stored as D (None: a binary dataset written before tables existed).

        D comes from shared storage: every member is typed and bounded before use, and any
        problem is one DataError 'WHERE: classes.FIELD ...'.
        """
        if d is None:
            return cls.binary()
        if not isinstance(d, dict) or set(d) != {"mode", "entries", "ignore"}:
            got = (f"keys {_short(sorted(map(str, d))[:5])}" if isinstance(d, dict)
                   else type(d).__name__)
            raise DataError(f"{where}: classes must be an object with mode, entries and "
                            f"ignore, got {got}")
        entries, ignore = d["entries"], d["ignore"]
        if not isinstance(entries, list) or not 2 <= len(entries) <= MAX_CLASSES:
            got = (f"{len(entries)} entries" if isinstance(entries, list)
                   else type(entries).__name__)
            raise DataError(f"{where}: classes.entries must be a list of 2 to {MAX_CLASSES} "
                            f"classes, got {got}")
        classes = [_manifest_entry(e, f"{where}: classes.entries[{i}]", i)
                   for i, e in enumerate(entries)]
        ign = None
        if ignore is not None:
            ign = _manifest_entry(ignore, f"{where}: classes.ignore", IGNORE_INDEX)
        if d["mode"] not in MODES:
            raise DataError(f"{where}: classes.mode must be one of {', '.join(MODES)}, got "
                            f"{_short(d['mode'])}")
        try:
            return cls.of(classes, ign, d["mode"])
        except ConfigError as e:
            raise DataError(f"{where}: classes: {e}") from None

    # ----------------------------------------------------------------------------- queries

    @property
    def num_classes(self) -> int:
        return len(self.entries)

    @property
    def is_binary(self) -> bool:
        """Two classes: one sigmoid channel, whatever the mode."""
        return len(self.entries) == 2

    @property
    def out_channels(self) -> int:
        """Model output channels: 1 (binary), K (multiclass softmax), K-1 (multilabel)."""
        if self.is_binary:
            return 1
        return len(self.entries) if self.mode == "multiclass" else len(self.entries) - 1

    @property
    def is_multilabel(self) -> bool:
        """Overlapping binary labels (bit masks), not one class per pixel."""
        return self.mode == "multilabel" and not self.is_binary

    @property
    def label_names(self) -> tuple[str, ...]:
        """The names of a multilabel table's channels (every entry but the background)."""
        return self.names[1:]

    @property
    def ignore_index(self) -> int | None:
        """The label-map value of ignored pixels (IGNORE_INDEX), None without an ignore entry:
        what `loss.ignore_index` and the multi-class metrics take."""
        return IGNORE_INDEX if self.ignore is not None else None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    @property
    def colours(self) -> np.ndarray:
        """(K, 3) uint8: class i's RGB colour in row i."""
        return np.array([e.colour for e in self.entries], dtype=np.uint8).reshape(-1, 3)

    def valid_values(self) -> np.ndarray:
        """(256,) bool: which uint8 values may appear in a label map of this table (class
        indices, or a multilabel table's bit masks)."""
        ok = np.zeros(256, dtype=bool)
        if self.is_multilabel:
            ok[:1 << (len(self.entries) - 1)] = True
            return ok
        ok[:len(self.entries)] = True
        ok[IGNORE_INDEX] = self.ignore is not None
        return ok

    def lookup(self) -> np.ndarray:
        """(256, 3) uint8: the display colour of each label-map value. A multilabel mask shows
        its highest label (later labels are drawn over earlier ones: cup over disc)."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        if self.is_multilabel:
            for v in range(1, 1 << (len(self.entries) - 1)):
                lut[v] = self.entries[v.bit_length()].colour
            return lut
        lut[:len(self.entries)] = self.colours
        if self.ignore is not None:
            lut[IGNORE_INDEX] = self.ignore.colour
        return lut

    def colourize(self, index_map: np.ndarray) -> np.ndarray:
        """(H, W) class indices (or multilabel bit masks) -> (H, W, 3) uint8 RGB in the table's
        colours (`lookup`); ValueError on a value the table does not have."""
        arr = np.asarray(index_map)
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.integer) or (
                    arr.size and (arr.min() < 0 or arr.max() > 255)):
                raise ValueError(f"colourize needs class indices 0..255, got {arr.dtype}")
            arr = arr.astype(np.uint8)
        invalid = ~self.valid_values()[arr]
        if invalid.any():
            bad = np.unique(arr[invalid])[:5].tolist()
            raise ValueError(f"colourize: values {bad} are not in the class table")
        return self.lookup()[arr]

    def describe(self) -> str:
        """One line for logs: '4 classes (multiclass): background, artery, ...; ignore: x'."""
        ign = f"; ignore: {self.ignore.name}" if self.ignore is not None else ""
        return f"{len(self.entries)} classes ({self.mode}): {', '.join(self.names)}{ign}"


def to_bitmask(channels: np.ndarray) -> np.ndarray:
    """(C, H, W) binary label channels -> (H, W) uint8 bit mask (channel c is bit c)."""
    if channels.ndim != 3 or not 1 <= channels.shape[0] <= MAX_LABELS:
        raise ValueError(f"expected (C, H, W) with 1 <= C <= {MAX_LABELS}, got {channels.shape}")
    bits = (np.asarray(channels) > 0).astype(np.uint8)
    weights = (1 << np.arange(bits.shape[0], dtype=np.uint8)).reshape(-1, 1, 1)
    return (bits * weights).sum(0, dtype=np.uint8)


def from_bitmask(mask: np.ndarray, num_labels: int) -> np.ndarray:
    """(H, W) bit mask -> (C, H, W) uint8 {0, 1} channels, C = NUM_LABELS."""
    shifts = np.arange(num_labels, dtype=np.uint8).reshape(-1, 1, 1)
    return (np.asarray(mask, dtype=np.uint8)[None] >> shifts) & 1


def _parse_colour(text: str) -> Colour | None:
    parts = text.split(",")
    if len(parts) != 3 or not all(_BYTE_RE.fullmatch(p.strip()) for p in parts):
        return None
    colour = tuple(int(p) for p in parts)
    return colour if all(v <= 255 for v in colour) else None  # type: ignore[return-value]


def _build(classes: list[tuple[str, Colour]], ignore: list[tuple[str, Colour]], mode: str,
           where: str) -> ClassTable:
    if len(ignore) > 1:
        raise ConfigError(f"{where}: entries {ignore[0][0]!r} and {ignore[1][0]!r} are both "
                          "marked ignore; a table has at most one")
    try:
        return ClassTable.of(classes, ignore[0] if ignore else None, mode)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _yaml_entry(item: object, where: str) -> tuple[str, Colour, bool]:
    """(name, colour, is_ignore) of one YAML list item; ConfigError naming WHERE."""
    keys = {"name", "colour", "color", "ignore"}
    if not isinstance(item, dict) or not set(item) <= keys or "name" not in item:
        raise ConfigError(f"{where}: expected {{name, colour, ignore?}}, got {_short(item)}")
    if ("colour" in item) == ("color" in item):
        raise ConfigError(f"{where} ({_short(item['name'])}): give exactly one colour")
    raw = item.get("colour", item.get("color"))
    if isinstance(raw, str):
        colour = _parse_colour(raw)
    elif isinstance(raw, list) and len(raw) == 3 and all(type(v) is int for v in raw):
        colour = tuple(raw) if all(0 <= v <= 255 for v in raw) else None
    else:
        colour = None
    if colour is None:
        raise ConfigError(f"{where} ({_short(item['name'])}): colour must be 3 integers "
                          f"0..255, got {_short(raw)}")
    is_ignore = item.get("ignore", False)
    if not isinstance(is_ignore, bool) or not isinstance(item["name"], str):
        raise ConfigError(f"{where}: name must be text and ignore true or false, got "
                          f"{_short(item)}")
    return item["name"], colour, is_ignore  # type: ignore[return-value]


def _manifest_entry(e: object, where: str, index: int) -> tuple[str, Colour]:
    """(name, colour) of one manifest entry whose index must be INDEX; DataError naming it."""
    if not isinstance(e, dict) or set(e) != {"name", "index", "colour"}:
        raise DataError(f"{where} must be an object with name, index and colour")
    name, colour = e["name"], e["colour"]
    if type(e["index"]) is not int or e["index"] != index:
        raise DataError(f"{where}.index must be {index}, got {_short(e['index'])}")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise DataError(f"{where}.name is not a plain class name: {_short(name)}")
    if not (isinstance(colour, list) and _is_colour(tuple(colour[:4]))):
        raise DataError(f"{where}.colour must be 3 integers 0..255, got {_short(colour)}")
    return name, tuple(colour)  # type: ignore[return-value]
