"""The oracle catches what it promises to: other exceptions, multi-line errors, hangs, memory
and writes outside the case's folder (else a green fuzz run would mean nothing)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.fuzz import oracle
from unetdist.errors import DataError


def _run(call, tmp_path):
    tally = oracle.Tally()
    case = tmp_path / "case"
    case.mkdir(exist_ok=True)
    return tally, lambda: oracle.run_case(call, case, "probe", tally)


def test_success_and_one_line_user_errors_pass(tmp_path):
    tally, run = _run(lambda: (tmp_path / "case" / "inside.txt").write_text("x"), tmp_path)
    assert run() == "ok" and tally.ok == 1
    tally2, run2 = _run(lambda: (_ for _ in ()).throw(DataError("bad shard")), tmp_path)
    assert run2() == "user error" and tally2.user_errors == 1


@pytest.mark.parametrize("call, counter", [
    (lambda: {}["missing"], "other"),
    (lambda: (_ for _ in ()).throw(DataError("two\nlines")), "other"),
    (lambda: open("/tmp/unetdist-oracle-probe.txt", "w").close(), "writes_outside"),
    (lambda: np.ones(4 * 2**30, np.uint8), "memory"),
])
def test_failures_are_caught_and_counted(tmp_path, call, counter):
    tally, run = _run(call, tmp_path)
    with pytest.raises(AssertionError):
        run()
    assert getattr(tally, counter) == 1


def test_a_hang_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(oracle, "CASE_SECONDS", 0.3)
    tally, run = _run(lambda: time.sleep(30), tmp_path)
    start = time.monotonic()
    with pytest.raises(AssertionError, match="hang"):
        run()
    assert tally.hangs == 1 and time.monotonic() - start < 5
