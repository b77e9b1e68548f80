"""The README's and docs/*.md's fenced shell blocks as commands, the README's Python blocks as
scripts, and their relative links, so tests break when the documentation drifts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.util import REPO

FENCE = re.compile(r"^```(bash|sh|shell)\n(.*?)^```", re.DOTALL | re.MULTILINE)
PYTHON_FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
ANY_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.MULTILINE)


def doc_files() -> list[Path]:
    """README.md first (the docs' examples continue its synthetic run), then docs/*.md by name."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def readme_commands(text: str | None = None) -> list[str]:
    """Every command line of a Markdown text's bash blocks (default: the README), in order
    (continuations joined, trailing `# comments` dropped)."""
    text = (REPO / "README.md").read_text() if text is None else text
    out: list[str] = []
    for block in FENCE.finditer(text):
        joined = re.sub(r"\s*\\\n\s*", " ", block.group(2))
        for line in joined.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def python_blocks(text: str | None = None) -> list[str]:
    """The source of every ```python block of a Markdown text (default: the README), in order."""
    text = (REPO / "README.md").read_text() if text is None else text
    return [block.group(1) for block in PYTHON_FENCE.finditer(text)]


def doc_commands() -> list[str]:
    """The command lines of README.md and every docs/*.md, in walking order."""
    return [line for f in doc_files() for line in readme_commands(f.read_text())]


def anchors(text: str) -> set[str]:
    """The heading anchors GitHub gives a Markdown text: lower case, punctuation other than
    `-` and `_` dropped, spaces as `-`, a repeated heading suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    for title in HEADING.findall(ANY_FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        if n:
            seen[f"{slug}-{n}"] = 1
    return set(seen)


def broken_links(doc: Path) -> list[str]:
    """Relative links of one Markdown file whose file, or heading anchor in a .md file, is
    missing (web links are not followed)."""
    bad = []
    for link in LINK.findall(ANY_FENCE.sub("", doc.read_text())):
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        if not target.exists():
            bad.append(f"{link} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target.read_text()):
            bad.append(f"{link} (no such heading)")
    return bad


def split_command(line: str) -> list[str]:
    return shlex.split(line)


def overrides_and_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """(--config value, dotted key=value overrides) of one unetdist command line."""
    config = None
    if "--config" in argv:
        config = argv[argv.index("--config") + 1]
    sub = [a for a in argv if re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+=.*", a)]
    return config, sub
