"""Issue 18.3: who prints a UserError under a launcher (RANK/LOCAL_RANK as torchrun sets them)."""

from __future__ import annotations

import pytest

from unetdist.cli import main, should_print
from unetdist.errors import DataError


@pytest.mark.parametrize("rank, local_rank, node_local, printed", [
    ("0", "0", False, True),
    ("1", "1", False, False),  # the same error on another rank: quiet
    ("2", "0", False, False),  # another node's first process, the job's error: quiet
    ("2", "0", True, True),  # ... its own node's staging failure: says it
    ("3", "1", True, False),
])
def test_who_prints(monkeypatch, rank, local_rank, node_local, printed):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    e = DataError("x")
    e.node_local = node_local
    assert should_print(e) is printed


def test_a_quiet_rank_exits_with_the_same_status(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("RANK", "1")
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: run directory not found")


@pytest.mark.parametrize("argv", [
    ["--version"],
    ["nosuchcommand"],  # argparse's usage error: SystemExit(2)
    pytest.param(["report", "{tmp}/missing"], marks=pytest.mark.slow),  # a UserError: imports torch
])
def test_in_process_cli_is_what_the_console_script_prints(tmp_path, argv):
    """tests.util.cli (in this process) against `python -m unetdist` (a new interpreter)."""
    from tests.util import cli, cli_subprocess, subprocess_env

    args = [a.format(tmp=tmp_path) for a in argv]
    env = subprocess_env(COLUMNS="80")  # argparse wraps usage to the terminal's width
    ours, real = cli(*args, env=env), cli_subprocess(*args, env=env)
    assert real.returncode != 0 or argv == ["--version"]
    assert (ours.returncode, ours.stdout, ours.stderr) == (real.returncode, real.stdout,
                                                           real.stderr)
