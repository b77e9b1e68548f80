"""Field checks shared by the config sections: each raises one ConfigError naming the field.

The message reads `<dotted field> must be <what is allowed>, got <value>`; tests and users rely
on that shape, so every section check goes through these helpers.
"""

from __future__ import annotations

from typing import Any

from unetdist.errors import ConfigError

# YAML 1.1 (PyYAML, OmegaConf's dotlist parser) reads no/off/false as the boolean False, which a
# str field then holds as "False": `train.precision=no` must still mean "no".
_FALSE_SPELLINGS = ("False", "false", "no", "off")


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")


def _one_of(name: str, value: Any, choices: tuple) -> None:
    _require(value in choices, name, value, "one of " + "|".join(map(str, choices)))


def _enum(name: str, value: Any, choices: tuple, false_means: str | None = None) -> str:
    """`value` checked against `choices`; a YAML false (no/off/false) means `false_means`."""
    if false_means is not None and value in _FALSE_SPELLINGS:
        value = false_means
    _one_of(name, value, choices)
    return value
