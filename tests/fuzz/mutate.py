"""Hostile edits of bytes, JSON documents and tar member lists, drawn by hypothesis."""

from __future__ import annotations

import copy
import json
import struct

from hypothesis import strategies as st

# Values that broke or nearly broke readers: sizes as strings and floats, bools for ints,
# huge and negative numbers, wrong containers.
HOSTILE = ["60000", "1e300", 1e300, 1.5, -1, 0, True, False, None, 2**70, 10**400 // 10**380,
           [], {}, [1, 2], {"a": 1}, "", "../../etc/passwd", "x" * 300, "\u00e9\n\x00"]

# A fresh copy each draw: an edit that adds a key into a drawn {} must not change HOSTILE
# itself, or the next case replays differently (hypothesis: FlakyStrategyDefinition).
hostile_values = st.sampled_from(HOSTILE).map(copy.deepcopy)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=12), hostile_values)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)


def nesting_bomb(depth: int, opener: str = "[") -> bytes:
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "{":
        return ('{"a":' * depth + "1" + closer * depth).encode()
    return (opener * depth + closer * depth).encode()


@st.composite
def raw_json(draw) -> bytes:
    """JSON-ish bytes that are not a JSON document we wrote: bombs, constants, long numbers."""
    kind = draw(st.sampled_from(["bomb", "bomb-open", "constant", "digits", "binary", "utf16"]))
    if kind.startswith("bomb"):
        depth = draw(st.sampled_from([40, 1000, 200_000]))
        data = nesting_bomb(depth, draw(st.sampled_from("[{")))
        return data[: len(data) // 2] if kind == "bomb-open" else data
    if kind == "constant":
        return draw(st.sampled_from([b"NaN", b'{"width": Infinity, "height": -Infinity}',
                                     b'{"height": NaN, "width": 5}']))
    if kind == "digits":
        return b'{"width": ' + b"9" * draw(st.integers(1, 6000)) + b', "height": 20}'
    if kind == "utf16":
        return json.dumps({"a": 1}).encode("utf-16")
    return draw(st.binary(max_size=200))


@st.composite
def hostile_meta(draw, meta: dict) -> bytes:
    """A sample's meta.json made hostile: sizes of the wrong type or size, bombs, any edit."""
    kind = draw(st.sampled_from(["sizes", "raw", "edited"]))
    if kind == "raw":
        return draw(raw_json())
    if kind == "edited":
        return draw(json_document(meta))
    meta = dict(meta)
    sizes = st.sampled_from(HOSTILE + [60000, 36 + 1, 8000])
    for key in draw(st.sampled_from([("width",), ("height",), ("width", "height")])):
        meta[key] = draw(sizes)
    return json.dumps(meta).encode()


def paths(doc: object, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) into DOC, the root included."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, prefix + (i,))
    return out


@st.composite
def edited_json(draw, doc: object) -> object:
    """DOC (not modified) with 1-3 nodes replaced, deleted or given an extra key."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        inner = paths(doc)[1:]  # the root last: hypothesis favours the first choices
        path = draw(st.sampled_from(inner + [()]))
        if not path:
            doc = draw(json_values)
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["replace", "hostile", "delete", "add"]))
        if op == "delete":
            del parent[path[-1]]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        else:
            parent[path[-1]] = draw(hostile_values if op == "hostile" else json_values)
        if not isinstance(doc, dict | list):
            break
    return doc


@st.composite
def json_document(draw, doc: object) -> bytes:
    """Bytes of a hostile version of DOC: edited, truncated/flipped text, or raw JSON-ish."""
    kind = draw(st.sampled_from(["edited", "edited", "bytes", "raw"]))
    if kind == "raw":
        return draw(raw_json())
    text = json.dumps(draw(edited_json(doc)) if kind == "edited" else doc).encode()
    return draw(edited_bytes(text)) if kind == "bytes" else text


@st.composite
def edited_bytes(draw, data: bytes) -> bytes:
    """DATA with a few bytes flipped, a run inserted, or cut short."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "flip", "insert", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "truncate":
            del data[at:]
    return bytes(data)


def png_declaring(png: bytes, width: int, height: int) -> bytes:
    """PNG with its IHDR size rewritten (a small file that declares a huge image)."""
    return png[:16] + struct.pack(">II", width, height) + png[24:]


MEMBER_NAMES = ["../evil.png", "/tmp/evil.png", "a/../../b.image.png", "x.image.png",
                "x.meta.json", "noext", ".hidden.png", "dup.label.png", "k\u00e9y.image.png",
                "a" * 200 + ".image.png", "s..image.png", "s.IMAGE.PNG", "s.image.png.gz"]


@st.composite
def edited_members(draw, members: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """A sample-level edit of a tar's members: rename, add, drop, reorder, replace content."""
    members = list(members)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(members) - 1)) if members else 0
        op = draw(st.sampled_from(["rename", "add", "drop", "swap", "content", "meta", "bomb"]))
        if not members:
            op = "add"
        name, data = members[i] if members else ("", b"")
        if op == "rename":
            members[i] = (draw(st.sampled_from(MEMBER_NAMES) | st.text(min_size=1, max_size=30)
                               .filter(lambda s: "\x00" not in s)), data)
        elif op == "add":
            members.insert(i, (draw(st.sampled_from(MEMBER_NAMES)), draw(st.binary(max_size=64))))
        elif op == "drop":
            del members[i]
        elif op == "swap":
            j = draw(st.integers(0, len(members) - 1))
            members[i], members[j] = members[j], members[i]
        elif op == "content":
            members[i] = (name, draw(edited_bytes(data)))
        elif op == "meta" and name.endswith(".meta.json"):
            try:
                members[i] = (name, draw(hostile_meta(json.loads(data))))
            except (ValueError, KeyError, TypeError, RecursionError):  # an earlier edit broke it
                members[i] = (name, draw(raw_json()))
        elif op == "bomb" and name.endswith(".png"):
            side = draw(st.sampled_from([0, 1, 30000, 2**31 - 1, 2**32 - 1]))
            members[i] = (name, png_declaring(data, side, draw(st.sampled_from([1, 20, side]))))
    return members


YAML_BOMBS = [
    (b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    b"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"),
    b"model:\n  width: 8\nmodel:\n  width: 9\n",  # a duplicated key
    b"model: {width: 8\n", b"\t- x\n  y: [\n", b"!!python/object/apply:os.system ['true']\n",
    b"[" * 5000, b"model: " + b"[" * 20000 + b"]" * 20000 + b"\n", b"- 1\n- 2\n", b"just text\n",
    b"model:\n  width: 1e400\n", b"optim: {lr: .nan}\n", b"train: {max_steps: 99999999999999999999}\n",
    b"\xff\xfe\x00bad utf\n", b"",
]


@st.composite
def yaml_document(draw, doc: object) -> bytes:
    """Bytes of a hostile YAML version of DOC: edited (as YAML), flipped text, or a bomb."""
    import yaml

    kind = draw(st.sampled_from(["edited", "edited", "bytes", "bomb"]))
    if kind == "bomb":
        return draw(st.sampled_from(YAML_BOMBS))
    text = yaml.safe_dump(draw(edited_json(doc)) if kind == "edited" else doc).encode()
    return draw(edited_bytes(text)) if kind == "bytes" else text
