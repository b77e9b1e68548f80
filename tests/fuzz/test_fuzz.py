"""Every registered fuzz target, FUZZ_CASES cases in all (derandomized: the same cases each run).

`make test` runs the short default; `make fuzz FUZZ_CASES=20000` the long run, which ends with
the tally line (cases, UserErrors, other exceptions, hangs, writes outside). The run-folder
targets mutate copies of the session's tiny trained run, so their test is marked slow.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import run_targets, runkit, spec_targets  # noqa: F401 (they register targets)
from tests.fuzz.oracle import run_case
from tests.fuzz.targets import NEEDS_RUN, SHARES, TARGETS

CASES = int(os.environ.get("FUZZ_CASES", "200"))


def _cases(name: str) -> int:
    return max(1, math.ceil(CASES * SHARES[name] / sum(SHARES.values())))


def _fuzz(name: str, data: st.DataObject) -> None:
    case = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    try:
        call = TARGETS[name](case, data)
        run_case(call, case, name)
    finally:
        shutil.rmtree(case, ignore_errors=True)


def _run(name: str) -> None:
    run = settings(max_examples=_cases(name), derandomize=True, database=None, deadline=None,
                   suppress_health_check=list(HealthCheck), print_blob=False)(
        given(data=st.data())(lambda data: _fuzz(name, data)))
    run()


@pytest.mark.parametrize("name", sorted(set(TARGETS) - NEEDS_RUN))
def test_fuzz_target(name: str) -> None:
    _run(name)


@pytest.mark.slow  # tiny_run trains once per session
@pytest.mark.parametrize("name", sorted(NEEDS_RUN))
def test_fuzz_run_target(name: str, tiny_run: Path, tiny_shards: Path) -> None:
    runkit.use(tiny_run, tiny_shards)
    _run(name)
