"""Test-wide fixtures: an isolated environment, the fast-tier guard, one shared tiny run, and
the rules that let `make test` run on two pytest-xdist workers.

The tiny dataset and the tiny trained run are built once per session and shared by the trust,
advice, predict and tracking tests. They are read-only: a test that changes a run folder or a
shard copies it first (`shutil.copytree(tiny_run, tmp_path / "run")`).

`make test` runs `-n 2 --dist loadgroup`: a test module is one unit of work (its module-scoped
fixtures are built once, on one worker) unless its tests name an `xdist_group` themselves (the
Slurm tests share one cluster on fixed ports: group "slurm"). A test marked `exclusive` (it
bounds a wall-clock time or races a clock) runs while the other worker runs light tests only
(tests.util `exclusive_slot`), so the other worker's trainings cannot make it late; they form
one group.
"""

import os
from pathlib import Path

import pytest

# One torch thread in the test process, as subprocess_env gives every child: on a shared 2-core
# box OpenMP threads waiting for each other doubled the suite's CPU time (test_inference.py +
# test_models.py: 52 s user with the default, 25 s with one). Set before torch is imported; a
# user's own OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory):
    """Keep a user's accelerate/HF config and W&B credentials out of every test."""
    home = tmp_path_factory.mktemp("hf_home")
    saved = {k: os.environ.get(k) for k in ("HF_HOME", "WANDB_MODE", "WANDB_DIR")}
    os.environ["HF_HOME"] = str(home)
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch

    threads = os.environ["OMP_NUM_THREADS"]
    if threads.isdigit() and int(threads) > 0:  # in case torch was imported before this file
        torch.set_num_threads(int(threads))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _group(item: pytest.Item) -> str:
    """The item's xdist_group; else "exclusive" for an exclusive test; else its module's name."""
    mark = item.get_closest_marker("xdist_group")
    if mark is not None:
        return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
    return "exclusive" if item.get_closest_marker("exclusive") else item.path.stem


GROUP_SECONDS = Path(__file__).with_name("group_seconds.json")
UNKNOWN_SECONDS = 10.0  # a group the file does not know yet (a new module) goes mid-queue


def _group_seconds() -> dict[str, float]:
    """Each group's seconds in a measured full run: `make test-seconds` rewrites the file."""
    import json

    return json.loads(GROUP_SECONDS.read_text()) if GROUP_SECONDS.exists() else {}


def _turn(item: pytest.Item, seconds: dict[str, float]) -> tuple[int, float]:
    """When a test's group is handed out (its latest test's turn). The exclusive tests first:
    at the start the other worker is in a light test, later it may be in a fixture that takes
    minutes. Then the all-light groups, which run beside them (tests.util.exclusive_slot).
    Then the heavy groups, longest first (the Slurm group leads), so that the run ends on
    short groups on both workers rather than on one long group while the other core idles."""
    from tests.util import is_heavy

    if item.get_closest_marker("exclusive"):
        return (0, 0.0)
    if not is_heavy(item):
        return (1, 0.0)
    return (2, -seconds.get(_group(item), UNKNOWN_SECONDS))


def pytest_addoption(parser):
    parser.addoption("--write-group-seconds", metavar="PATH", default=None,
                     help="write each xdist group's seconds (setup, call, teardown) as JSON: "
                          "the schedule's durations (make test-seconds)")


_seconds_seen: dict[str, float] = {}  # the controller's tally for --write-group-seconds


def pytest_runtest_logreport(report):
    tail = report.nodeid.rpartition("]")[2]  # "@group" as collection_modifyitems appends it
    if "@" in tail:
        group = tail.rpartition("@")[2]
        _seconds_seen[group] = _seconds_seen.get(group, 0.0) + report.duration


def pytest_sessionfinish(session):
    out = session.config.getoption("--write-group-seconds")
    if out and _seconds_seen and not hasattr(session.config, "workerinput"):
        import json

        doc = {g: round(s, 1) for g, s in sorted(_seconds_seen.items())}
        Path(out).write_text(json.dumps(doc, indent=1) + "\n")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under --dist loadgroup, append `@group` to every test id (what the scheduler groups by).

    pytest-xdist 3.8 does so itself for xdist_group marks, through `item._nodeid`, which
    pytest 9.2 no longer reads (the id became the structured `item._id`): there its groups
    silently fell apart. Here every test gets a group, so that a module's tests (and its
    module-scoped fixtures) stay on one worker. The order (`_turn`) is the schedule.
    """
    if not config.getoption("loadgroup", False):  # set on xdist's workers only
        return
    turns: dict[str, tuple[int, float]] = {}
    seconds = _group_seconds()
    for item in items:  # a group goes when its heaviest test would: heavy and light may mix
        turns[_group(item)] = max(turns.get(_group(item), (0, 0.0)), _turn(item, seconds))
    items.sort(key=lambda item: turns[_group(item)])  # stable: collection order within a turn
    for item in items:
        if "@" in item.nodeid.rpartition("]")[2]:
            continue  # named by pytest-xdist (a pytest that still reads item._nodeid)
        nodeid = f"{item.nodeid}@{_group(item)}"
        if hasattr(item, "_id"):
            from _pytest.nodeid import coerce_node_id

            item._id = coerce_node_id(nodeid)
        else:
            item._nodeid = nodeid


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """An `exclusive` test (setup, call, teardown) runs alone on a shared box."""
    from tests.util import exclusive_slot

    with exclusive_slot(item, nextitem):
        return (yield)


_worker_tallies: list[dict] = []  # the fuzz tallies of the pytest-xdist workers


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """A worker is done: keep its fuzz tally (tests/fuzz/conftest.py) for the summary."""
    tally = getattr(node, "workeroutput", {}).get("fuzz_tally")
    if tally:
        _worker_tallies.append(tally)


def pytest_terminal_summary(terminalreporter):
    if _worker_tallies:
        from tests.fuzz.oracle import Tally

        total = {k: sum(t[k] for t in _worker_tallies) for k in _worker_tallies[0]}
        terminalreporter.write_line(Tally(**total).line())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """Fixtures count: a module fixture that trains fails the unmarked test that needs it."""
    from tests.guard import training_guard

    with training_guard(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    from tests.guard import training_guard

    with training_guard(item):
        yield


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """6 train (4 train + 2 val after the split) and 2 test 64x64 synthetic images, sharded.

    The raw DRIVE-layout images are beside it, in `tiny_shards.parent / "raw"`.
    """
    from tests.util import synthetic_shards

    return synthetic_shards(tmp_path_factory.mktemp("tiny"), n_train=6, n_test=2, seed=0,
                            split_val=0.34)


@pytest.fixture(scope="session")
def tiny_run(tiny_shards, tmp_path_factory) -> Path:
    """A 2-step single-process run on `tiny_shards` (`trust_helpers.train_args`): checkpoint
    step-000002 and best/. Training: only tests marked slow may use it (the guard checks)."""
    from tests.e2e.trust_helpers import train_args
    from tests.util import cli

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    r = cli(*train_args(tiny_shards, run, "train.max_steps=2"))
    assert r.returncode == 0, r.stderr[-3000:]
    return run
