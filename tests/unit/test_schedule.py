"""The order `make test` hands groups to its two workers (tests/conftest.py `_turn`) and the
measured group seconds that order the heavy ones (`make test-seconds`)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import conftest


class _Item:
    """The part of a pytest item `_turn` reads: its module path and its markers."""

    def __init__(self, module: str, *marks: str):
        self.path = Path("tests/e2e") / f"{module}.py"
        self._marks = set(marks)

    def get_closest_marker(self, name: str):
        return pytest.mark.__getattr__(name).mark if name in self._marks else None


def test_exclusive_then_light_then_heavy_groups_longest_first():
    seconds = {"test_long": 90.0, "test_short": 3.0, "test_light": 500.0}
    items = [_Item("test_short", "slow"), _Item("test_light"), _Item("test_new", "dist"),
             _Item("test_long", "dist", "slow"), _Item("test_x", "exclusive", "slow")]
    order = sorted(items, key=lambda item: conftest._turn(item, seconds))
    assert [i.path.stem for i in order] == [
        "test_x", "test_light", "test_long", "test_new", "test_short"]  # new: 10 s, mid-queue
    assert conftest._turn(_Item("test_new", "slurm"), {}) == (2, -conftest.UNKNOWN_SECONDS)


def test_the_controller_writes_each_groups_summed_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "_seconds_seen", {})
    for nodeid, duration in (("tests/a.py::t1@test_a", 1.25), ("tests/a.py::t2[x@y]@test_a", 2.0),
                             ("tests/s.py::t[1]@slurm", 4.0), ("tests/b.py::t[p@q]", 9.0)):
        conftest.pytest_runtest_logreport(SimpleNamespace(nodeid=nodeid, duration=duration))
    out = tmp_path / "seconds.json"
    config = SimpleNamespace(getoption=lambda name: str(out))
    conftest.pytest_sessionfinish(SimpleNamespace(config=config))
    assert json.loads(out.read_text()) == {"slurm": 4.0, "test_a": 3.2}  # ungrouped: left out
    out.unlink()
    config.workerinput = {}  # a worker never writes: the controller sees every report
    conftest.pytest_sessionfinish(SimpleNamespace(config=config))
    assert not out.exists()


def test_the_committed_seconds_name_the_slurm_group_as_the_longest():
    seconds = conftest._group_seconds()
    assert all(isinstance(v, (int, float)) and v >= 0 for v in seconds.values())
    assert max(seconds, key=seconds.get) == "slurm"  # its waits pair with the other's work
