"""The fast tier's guard: a test that trains or launches must say so with a marker.

`make test-fast` deselects `slow`, `dist` and `slurm`; a test that starts a training without one
of them silently makes the fast tier slow (issue 22). While an unmarked test (and the fixtures
it sets up) runs, `unetdist.train.loop.fit` and `subprocess.Popen` are wrapped: training in this
process, or starting `accelerate launch`, torchrun, `unetdist train` or `unetdist demo` in a
child, fails the test with a message that says which marker to add.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence

import pytest

TIER_MARKS = ("slow", "dist", "slurm")
_LAUNCHERS = {"torchrun", "torch.distributed.run", "torch.distributed.launch",
              "accelerate.commands.launch"}
_TRAINING_COMMANDS = {"train", "demo"}  # `demo` trains a model with accelerate launch


def may_train(item: pytest.Item) -> bool:
    """True when ITEM carries a marker that keeps it out of the fast tier."""
    return any(item.get_closest_marker(m) is not None for m in TIER_MARKS)


def _words(args: object) -> list[str]:
    if isinstance(args, (str, bytes, os.PathLike)):
        return os.fsdecode(args).split()
    return [os.fsdecode(a) for a in args]  # type: ignore[union-attr]


def starts_training(args: object) -> str | None:
    """What a child process with ARGS would start that trains (None if nothing does)."""
    words = _words(args)
    names = [os.path.basename(w) for w in words]
    for i, name in enumerate(names):
        if name in _LAUNCHERS or (name == "accelerate" and "launch" in names[i + 1:i + 2]):
            return "accelerate launch / torchrun"
        if name == "unetdist" and i + 1 < len(words):
            command = words[i + 1]
            if command in _TRAINING_COMMANDS and "--check" not in words[i + 2:]:
                return f"`unetdist {command}`"
    return None


def message(item_id: str, what: str) -> str:
    return (f"{item_id} starts {what} but is not marked slow, dist or slurm: the fast tier "
            "(make test-fast) must not train. Mark the test (or the module, with "
            "`pytestmark = pytest.mark.slow`) or stop it from training.")


@contextlib.contextmanager
def training_guard(item: pytest.Item) -> Iterator[None]:
    """Fail ITEM, during the block, if it trains or launches without a tier marker."""
    if may_train(item):
        yield
        return
    from unetdist.train import loop

    real_fit, real_init = loop.fit, subprocess.Popen.__init__

    def guarded_fit(*args, **kwargs):
        pytest.fail(message(item.nodeid, "a training (unetdist.train.loop.fit)"), pytrace=False)

    def guarded_init(self, args: Sequence[str] | str, *rest, **kwargs):
        what = starts_training(args)
        if what is not None:
            pytest.fail(message(item.nodeid, what), pytrace=False)
        real_init(self, args, *rest, **kwargs)

    loop.fit, subprocess.Popen.__init__ = guarded_fit, guarded_init
    try:
        yield
    finally:
        loop.fit, subprocess.Popen.__init__ = real_fit, real_init
