"""Issue 25 item 1: the class table — command-line and YAML spellings, the manifest form read
from untrusted shard folders, and the helpers later stages use (out_channels, colourize)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.mutate import edited_json
from unetdist.data.classes import IGNORE_INDEX, MAX_CLASSES, ClassTable
from unetdist.data.manifest import class_table, parse_manifest
from unetdist.errors import ConfigError, DataError

AV = ["background=0,0,0", "artery=255,0,0", "vein=0,0,255", "crossing=0,255,0"]
AV_IGNORE = [*AV[:2], "uncertain=255,255,255:ignore", *AV[2:]]  # the ignore entry anywhere


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


def test_command_line_table_reads_in_order_with_the_ignore_entry_apart():
    t = ClassTable.from_specs(AV_IGNORE)
    assert t.names == ("background", "artery", "vein", "crossing")
    assert [e.index for e in t.entries] == [0, 1, 2, 3]
    assert t.ignore is not None and t.ignore.name == "uncertain"
    assert t.ignore.colour == (255, 255, 255) and t.ignore_index == IGNORE_INDEX == 255
    np.testing.assert_array_equal(t.colours, [[0, 0, 0], [255, 0, 0], [0, 0, 255], [0, 255, 0]])
    assert t.colours.dtype == np.uint8
    assert (t.num_classes, t.out_channels, t.is_binary) == (4, 4, False)
    assert ClassTable.from_specs(AV).ignore_index is None
    assert ClassTable.from_specs([" background = 0, 0 ,0", "vessel=255,255,255"]) \
        == ClassTable.binary()
    assert t.describe() == ("4 classes (multiclass): background, artery, vein, crossing; "
                            "ignore: uncertain")


def test_out_channels_follow_the_mode():
    assert ClassTable.binary().out_channels == 1
    assert ClassTable.from_specs(AV[:2], mode="multilabel").out_channels == 1  # still binary
    assert ClassTable.from_specs(AV, mode="multilabel").out_channels == 3
    assert ClassTable.from_specs(AV).out_channels == 4


@pytest.mark.parametrize("specs,named", [
    (["background=0,0,0", "artery=255,0"], "'artery=255,0'"),
    (["background=0,0,0", "artery=256,0,0"], "'artery=256,0,0'"),
    (["background=0,0,0", "artery=-1,0,0"], "'artery=-1,0,0'"),
    (["background=0,0,0", "artery=²,0,0"], "'artery=²,0,0'"),  # a digit int() refuses
    (["background=0,0,0", "artery"], "'artery'"),
    (["background=0,0,0", "art ery=1,2,3"], "'art ery=1,2,3'"),
    (["background=0,0,0", "../x=1,2,3"], "'../x=1,2,3'"),
    (["background=0,0,0", "vein=1,2,3", "vein=4,5,6"], "'vein' appears twice"),
    (["background=0,0,0", "artery=1,2,3", "vein=1,2,3"], "'artery' and 'vein'"),
    (["background=0,0,0", "x=1,2,3", "bg=0,0,0:ignore"], "'background' and 'bg'"),
    (["background=0,0,0"], "got 1"),
    (["background=0,0,0", "a=1,1,1:ignore", "b=2,2,2:ignore"], "'a' and 'b'"),
])
def test_every_command_line_error_is_one_line_naming_the_entry(specs, named):
    with pytest.raises(ConfigError) as e:
        ClassTable.from_specs(specs)
    msg = _one_line(e)
    assert msg.startswith("--classes: ") and named in msg, msg


def test_a_multilabel_table_has_no_ignore_entry():
    with pytest.raises(ConfigError, match="'uncertain'.*multilabel"):
        ClassTable.from_specs(AV_IGNORE, mode="multilabel")
    with pytest.raises(ConfigError, match="mode must be one of multiclass, multilabel"):
        ClassTable.from_specs(AV, mode="softmax")


def test_at_most_max_classes():
    many = [f"c{i}={i // 65536},{i // 256 % 256},{i % 256}" for i in range(MAX_CLASSES + 1)]
    assert ClassTable.from_specs(many[:MAX_CLASSES]).num_classes == MAX_CLASSES
    with pytest.raises(ConfigError, match=f"got {MAX_CLASSES + 1}"):
        ClassTable.from_specs(many)


def test_yaml_table_equals_the_command_line_one(tmp_path):
    path = tmp_path / "av.yaml"
    path.write_text("- {name: background, colour: [0, 0, 0]}\n"
                    "- {name: artery, color: '255,0,0'}\n"
                    "- {name: uncertain, colour: [255, 255, 255], ignore: true}\n"
                    "- name: vein\n"
                    "  colour: 0, 0, 255\n"
                    "- {name: crossing, colour: [0, 255, 0], ignore: false}\n")
    assert ClassTable.from_yaml(path) == ClassTable.from_specs(AV_IGNORE)


@pytest.mark.parametrize("text,named", [
    ("{background: [0, 0, 0]}", "is a list"),
    ("- {name: background, colour: [0, 0, 0]}\n- {name: artery}\n", "entry 2 ('artery')"),
    ("- {name: background, colour: [0, 0]}\n- {name: a, colour: [1, 1, 1]}\n", "entry 1"),
    ("- {name: background, colour: [0, 0, 0]}\n- {name: a, colour: [1, 1, 300]}\n", "entry 2"),
    ("- {name: background, colour: [0, 0, 0]}\n- {name: a, colour: [1, 1, 1], shade: 3}\n",
     "entry 2"),
    ("- {name: background, colour: [0, 0, 0]}\n- {name: a, colour: [1, 1, 1], ignore: maybe}\n",
     "entry 2"),
    ("- {name: background, colour: [0, 0, 0]}\n- {name: a, colour: [0, 0, 0]}\n",
     "'background' and 'a'"),
    ("- {name: background, colour: [0, 0, 0]}\n- {name: a, colour: [1, 1, 1]\n", ".yaml:"),
])
def test_every_yaml_error_names_the_file_and_entry(tmp_path, text, named):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        ClassTable.from_yaml(path)
    msg = _one_line(e)
    assert str(path) in msg and named in msg, msg


# ------------------------------------------------------------------------------ manifest form


def test_manifest_form_round_trips_through_json():
    for t in (ClassTable.binary(), ClassTable.from_specs(AV_IGNORE),
              ClassTable.from_specs(AV, mode="multilabel")):
        assert ClassTable.from_manifest(json.loads(json.dumps(t.to_manifest()))) == t
    assert ClassTable.from_manifest(None) == ClassTable.binary()


GOOD = ClassTable.from_specs(AV_IGNORE).to_manifest()


def _with(path: str, value: object) -> dict:
    """GOOD with the member at dotted PATH (list positions as numbers) replaced by VALUE."""
    d = json.loads(json.dumps(GOOD))
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = d
    for p in parents:
        node = node[p]
    node[last] = value
    return d


HOSTILE = [
    ("not an object", "classes"),
    ([], "classes"),
    ({"mode": "multiclass"}, "classes"),
    (_with("extra", 1), "classes"),
    (_with("mode", "softmax"), "classes.mode"),
    (_with("mode", ["multiclass"]), "classes.mode"),
    (_with("entries", {"0": 1}), "classes.entries"),
    (_with("entries", GOOD["entries"][:1]), "classes.entries"),
    (_with("entries", [GOOD["entries"][0]] * 100_000), "classes.entries"),
    (_with("entries.1", "artery"), "classes.entries[1]"),
    (_with("entries.1.colour", [255, 0, 0, 0]), "classes.entries[1].colour"),
    (_with("entries.1.colour", [255, 0]), "classes.entries[1].colour"),
    (_with("entries.1.colour", ["255", 0, 0]), "classes.entries[1].colour"),
    (_with("entries.1.colour", [True, 0, 0]), "classes.entries[1].colour"),
    (_with("entries.1.colour", [256, 0, 0]), "classes.entries[1].colour"),
    (_with("entries.1.colour", [1.5, 0, 0]), "classes.entries[1].colour"),
    (_with("entries.1.colour", list(range(10**6))), "classes.entries[1].colour"),
    (_with("entries.1.colour", "255,0,0"), "classes.entries[1].colour"),
    (_with("entries.1.name", 7), "classes.entries[1].name"),
    (_with("entries.1.name", "../../etc"), "classes.entries[1].name"),
    (_with("entries.1.name", "a" * 10**6), "classes.entries[1].name"),
    (_with("entries.1.index", 2), "classes.entries[1].index"),
    (_with("entries.1.index", True), "classes.entries[1].index"),
    (_with("entries.2.name", "artery"), "'artery' appears twice"),
    (_with("entries.2.colour", [255, 0, 0]), "'artery' and 'vein'"),
    (_with("ignore", "uncertain"), "classes.ignore"),
    (_with("ignore.index", 4), "classes.ignore.index"),
    (_with("ignore.colour", [0, 0, 0]), "'background' and 'uncertain'"),
    ({**GOOD, "mode": "multilabel"}, "multilabel"),
]


@pytest.mark.parametrize("table,named", HOSTILE)
def test_a_hostile_manifest_table_is_one_data_error_naming_the_field(table, named):
    with pytest.raises(DataError) as e:
        ClassTable.from_manifest(table, "shards/manifest.json")
    msg = _one_line(e)
    assert msg.startswith("shards/manifest.json: ") and named in msg, msg


def _manifest(**extra) -> dict:
    shard = {"name": "train-000000.tar", "bytes": 10, "samples": 2, "sha256": "0" * 64}
    return {"format": 1, "splits": {"train": {"samples": 2, "shards": [shard]}},
            "total_bytes": 10, **extra}


def test_old_manifests_read_as_binary_and_tables_come_back_from_parse_manifest():
    old = parse_manifest(json.dumps(_manifest()).encode(), "old/manifest.json")
    assert class_table(old) == ClassTable.binary()
    table = ClassTable.from_specs(AV_IGNORE)
    new = parse_manifest(json.dumps(_manifest(classes=table.to_manifest())).encode(), "m.json")
    assert class_table(new) == table
    assert class_table(parse_manifest(json.dumps(_manifest(classes=None)).encode(), "m")) \
        == ClassTable.binary()


@pytest.mark.parametrize("table,named", HOSTILE[::3])
def test_parse_manifest_refuses_a_hostile_table_in_one_line(table, named):
    raw = json.dumps(_manifest(classes=table)).encode()
    with pytest.raises(DataError) as e:
        parse_manifest(raw, "shared/shards/manifest.json")
    msg = _one_line(e)
    assert msg.startswith("shared/shards/manifest.json: ") and named in msg, msg


@settings(max_examples=300, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_edit_of_a_table_reads_as_a_table_or_one_data_error(data):
    table = data.draw(edited_json(GOOD))
    raw = json.dumps(_manifest(classes=table)).encode()
    try:
        t = class_table(parse_manifest(raw, "fuzzed/manifest.json"))
    except DataError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzzed/manifest.json: "), str(e)
    else:
        assert ClassTable.from_manifest(t.to_manifest()) == t


# ------------------------------------------------------------------------------ helpers


def test_colourize_paints_the_table_colours_and_the_ignore_colour():
    t = ClassTable.from_specs(AV_IGNORE)
    idx = np.random.default_rng(0).choice(np.array([0, 1, 2, 3, 255], np.uint8), (40, 50))
    rgb = t.colourize(idx)
    assert rgb.shape == (40, 50, 3) and rgb.dtype == np.uint8
    reference = {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 0, 255), 3: (0, 255, 0),
                 255: (255, 255, 255)}
    for v, colour in reference.items():
        assert (rgb[idx == v] == colour).all()
    np.testing.assert_array_equal(t.colourize(idx.astype(np.int64)), rgb)
    with pytest.raises(ValueError, match=r"\[255\]"):
        ClassTable.from_specs(AV).colourize(idx)  # no ignore entry: 255 is not a value
    with pytest.raises(ValueError):
        t.colourize(np.full((2, 2), 4, np.uint8))


def test_valid_values():
    ok = ClassTable.from_specs(AV_IGNORE).valid_values()
    assert np.flatnonzero(ok).tolist() == [0, 1, 2, 3, 255]
    assert np.flatnonzero(ClassTable.binary().valid_values()).tolist() == [0, 1]
