"""The README's fenced shell blocks as commands, so tests break when the README drifts."""

from __future__ import annotations

import re
import shlex

from tests.util import REPO

FENCE = re.compile(r"^```(bash|sh|shell)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def readme_commands(text: str | None = None) -> list[str]:
    """Every command line of the README's bash blocks, in order (continuations joined,
    trailing `# comments` dropped)."""
    text = (REPO / "README.md").read_text() if text is None else text
    out: list[str] = []
    for block in FENCE.finditer(text):
        joined = re.sub(r"\s*\\\n\s*", " ", block.group(2))
        for line in joined.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def split_command(line: str) -> list[str]:
    return shlex.split(line)


def overrides_and_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """(--config value, dotted key=value overrides) of one unetdist command line."""
    config = None
    if "--config" in argv:
        config = argv[argv.index("--config") + 1]
    sub = [a for a in argv if re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+=.*", a)]
    return config, sub
