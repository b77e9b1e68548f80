"""The tree is the map: sizes, a named job for every module, one place per decision."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "unetdist"
MODULES = sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(p: Path) -> str:
    return str(p.relative_to(PKG.parent))


def test_top_level_holds_at_most_ten_modules():
    top = [p.name for p in PKG.glob("*.py")]
    assert len(top) <= 10, top


def test_every_module_is_named_in_its_package_docstring():
    missing = []
    for p in MODULES:
        if p.name == "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse((p.parent / "__init__.py").read_text())) or ""
        if f"`{p.name}`" not in doc:
            missing.append(_rel(p))
    assert not missing, f"not named in their package's __init__ docstring: {missing}"


def test_module_and_function_sizes():
    too_long = [(_rel(p), n) for p in MODULES if (n := len(p.read_text().splitlines())) > 400]
    assert not too_long, f"modules over 400 lines: {too_long}"
    big = []
    for p in MODULES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    big.append(f"{_rel(p)}:{node.lineno} {node.name} ({n} lines)")
    assert not big, f"functions over 60 lines: {big}"


def _hits(pattern: str) -> set[str]:
    rx = re.compile(pattern)
    return {_rel(p) for p in MODULES if rx.search(p.read_text())}


@pytest.mark.parametrize("what,pattern,home", [
    # precision: only distributed.py compares or passes precision names to accelerate
    ("precision comparison", r"""precision\s*[!=]=\s*["'](fp16|bf16|no)["']|["'](fp16|bf16)["']\s*[!=]=""",
     {"unetdist/distributed.py"}),
    ("Accelerator construction", r"\bAccelerator\(", {"unetdist/distributed.py"}),
    # device: "cuda if available else cpu" is decided once
    ("device choice", r"""["']cuda["'] if torch\.cuda\.is_available\(\)""",
     {"unetdist/distributed.py"}),
    # allowed names live in the registries; config.py asks them
    ("model names", r"""["']timm_unet["']\s*[,:)]""", {"unetdist/models/registry.py"}),
    ("loss names", r"""["']bce_dice["']\s*[,:)]""", {"unetdist/train/losses.py"}),
    ("optimizer names", r"""["']adamw["']\s*[,:)]""", {"unetdist/train/optim.py"}),
    # crash-safe writes: one module renames temporary files into place
    ("temp+rename", r"os\.(replace|rename)\(", {"unetdist/atomic.py", "unetdist/train/checkpoint.py"}),
])
def test_decision_lives_in_one_module(what, pattern, home):
    assert _hits(pattern) <= home, f"{what} decided outside {home}: {_hits(pattern) - home}"
