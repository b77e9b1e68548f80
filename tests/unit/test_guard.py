"""The fast-tier guard (tests/guard.py) fails an unmarked test that trains or launches, and
leaves marked ones alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.guard import starts_training, training_guard


class _Item:
    """The part of a pytest item the guard reads: its id and its markers."""

    def __init__(self, *marks: str):
        self.nodeid = "tests/e2e/test_fake.py::test_trains"
        self._marks = set(marks)

    def get_closest_marker(self, name: str):
        return pytest.mark.__getattr__(name).mark if name in self._marks else None


@pytest.mark.parametrize("argv, what", [
    ([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "-m",
      "unetdist", "train"], "accelerate launch / torchrun"),
    (["accelerate", "launch", "train.py"], "accelerate launch / torchrun"),
    (["/usr/bin/torchrun", "--nproc-per-node", "2", "x.py"], "accelerate launch / torchrun"),
    ([sys.executable, "-m", "unetdist", "train", "train.max_steps=2"], "`unetdist train`"),
    ("/venv/bin/unetdist demo --quick", "`unetdist demo`"),
    ([sys.executable, "-m", "unetdist", "train", "--check"], None),
    ([sys.executable, "-m", "unetdist", "stage", "a", "b"], None),
    (["bash", "-c", "echo train"], None),
])
def test_starts_training_recognises_launches_and_trainings(argv, what):
    assert starts_training(argv) == what


def test_an_unmarked_test_that_trains_in_process_fails_with_the_marker_to_add(tmp_path):
    from tests.util import cli

    with training_guard(_Item()), pytest.raises(pytest.fail.Exception) as e:
        cli("train", f"train.run_dir={tmp_path / 'run'}", f"data.shared_dir={tmp_path}",
            "data.stage=false")
    assert "test_fake.py::test_trains starts a training" in str(e.value)
    assert "not marked slow, dist or slurm" in str(e.value)
    assert not (tmp_path / "run").exists()


def test_an_unmarked_test_that_launches_fails_before_the_process_starts(tmp_path):
    marker = tmp_path / "started"
    argv = ["accelerate", "launch", "--num_processes", "2", "-c", f"open('{marker}', 'w')"]
    with training_guard(_Item()), pytest.raises(pytest.fail.Exception, match="accelerate"):
        subprocess.run(argv, check=False)
    assert not marker.exists()
    with training_guard(_Item()):  # anything else still runs
        assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0


@pytest.mark.parametrize("mark", ["slow", "dist", "slurm"])
def test_a_marked_test_may_train(mark):
    from unetdist.train import loop

    real_fit, real_init = loop.fit, subprocess.Popen.__init__
    with training_guard(_Item(mark)):
        assert loop.fit is real_fit and subprocess.Popen.__init__ is real_init
    with training_guard(_Item()):
        assert loop.fit is not real_fit
    assert loop.fit is real_fit and subprocess.Popen.__init__ is real_init  # restored


def test_the_conftest_guards_this_unmarked_test():
    from unetdist.train import loop

    assert loop.fit.__name__ == "guarded_fit"
    assert subprocess.Popen.__init__.__name__ == "guarded_init"
