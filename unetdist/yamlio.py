"""YAML that someone else may have written: config files and sweep specs.

PyYAML's SafeLoader never runs code, but it silently keeps the last of two equal keys (a typo
that drops a setting without a word), expands aliases without bound ("billion laughs": nine
lines that build 10^9 nodes once a consumer copies them, as OmegaConf does), recurses once per
nesting level (a RecursionError on 200,000 `[`), and its errors are multi-line tracebacks.
`load_yaml` reads one file with all of that refused up front, as one `ConfigError` line that
names FILE:LINE. Scalars resolve as OmegaConf resolves them (`1e-3` is a float, dates stay
strings), so a file means the same whether it reaches OmegaConf or a plain dict.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from unetdist.errors import ConfigError

MAX_BYTES = 1 << 20  # a config or a sweep spec is a few kB
MAX_NODES = 10_000  # after alias expansion; a full config is ~100
MAX_DEPTH = 64  # nesting levels; a config has 3

_FLOAT = re.compile(r"""^(?:
     [-+]?[0-9]+(?:_[0-9]+)*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9]+(?:_[0-9]+)*(?:[eE][-+]?[0-9]+)
    |\.[0-9]+(?:_[0-9]+)*(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.VERBOSE)


class _Refused(yaml.MarkedYAMLError):
    """A well-formed document we do not accept (duplicate key, too big, too deep)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, deep nesting and large alias expansions."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(problem=f"nested deeper than {MAX_DEPTH} levels",
                               problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], yaml.Mark] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            first = seen.setdefault((key.tag, key.value), key.start_mark)
            if first is not key.start_mark:
                raise _Refused(problem=f"duplicate key {key.value!r} (first at line "
                                       f"{first.line + 1})", problem_mark=key.start_mark)
        return node

    def construct_document(self, node):
        if _expanded_size(node) > MAX_NODES:
            raise _Refused(problem=f"aliases expand to more than {MAX_NODES} nodes (an alias "
                                   "bomb?); write the values out", problem_mark=node.start_mark)
        return super().construct_document(node)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()}


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of ROOT once every alias is copied out; stops counting past MAX_NODES.

    Iterative (children before parents) with one memo per node, so a bomb is measured in the
    time of its few distinct nodes. An alias cycle (`&a [*a]`) counts as too big.
    """
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_stack: set[int] = set()
    while stack:
        node, done = stack.pop()
        children = _children(node)
        if done:
            on_stack.discard(id(node))
            size[id(node)] = min(1 + sum(size[id(c)] for c in children), MAX_NODES + 1)
            continue
        if id(node) in size:
            continue
        if id(node) in on_stack:
            return MAX_NODES + 1
        on_stack.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)
    return size[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _one_line(path: Path, e: yaml.YAMLError) -> ConfigError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    return ConfigError(f"{where}: {f'{context}: ' if context else ''}{problem}")


def load_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """The content of the YAML file PATH (None when empty); ConfigError naming FILE:LINE."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None
    try:  # the reader refuses control characters as soon as it is built
        loader = _Loader(text)
    except yaml.YAMLError as e:
        raise _one_line(path, e) from None
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise _one_line(path, e) from None
    except RecursionError:  # a bound above should make this unreachable; never a traceback
        raise ConfigError(f"{path}: nested too deeply") from None
    finally:
        loader.dispose()
