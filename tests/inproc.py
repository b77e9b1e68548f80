"""Run `unetdist ARGS` inside the test process, as a user would see it from a shell.

Starting a Python interpreter that imports torch costs seconds per call on a loaded box; the
fast tier makes hundreds of CLI calls, so they go through `unetdist.cli.main(argv)` here, with
stdout/stderr captured and the exit status a shell would see. What a command changes in the
process (environment, working directory, torch threads, signal handlers, umask, accelerate's
singleton state, the decoded-sample cache) is put back afterwards, so one call cannot leak
into the next test.
Tests that need a real process (signals, a killed holder, start-up environment, the installed
console script) use `tests.util.cli_subprocess` instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path

_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
                             signal.SIGHUP) if s is not None)


def _exit_code(e: SystemExit, err: io.StringIO) -> int:
    """The status `sys.exit(code)` gives a shell: None is 0, a message is printed and is 1."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=err)
    return 1


def _reset_singletons() -> None:
    """What a fresh interpreter starts without: accelerate's process-wide state (a second
    Accelerator must not inherit the first one's settings) and the decoded-sample cache (a
    later run must decode, and judge, a shard's samples itself)."""
    from unetdist.distributed import forget_accelerator_state

    forget_accelerator_state()
    reader = sys.modules.get("unetdist.data.reader")
    if reader is not None:
        reader.CACHE.clear()


@contextlib.contextmanager
def restored_process_state(env: Mapping[str, str] | None,
                           cwd: str | Path | None) -> Iterator[None]:
    """Apply ENV (the whole environment) and CWD for the block; undo everything it changed."""
    import torch  # imported first, so its thread count below is the process's own default

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_signals = {s: signal.getsignal(s) for s in _SIGNALS}
    saved_threads = torch.get_num_threads()
    saved_umask = os.umask(0o022)
    os.umask(saved_umask)
    _reset_singletons()  # also what an earlier test built outside run_main
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update({k: str(v) for k, v in env.items()})
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        os.umask(saved_umask)
        for s, handler in saved_signals.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        torch.set_num_threads(saved_threads)
        _reset_singletons()


def run_main(args: list[str], env: Mapping[str, str] | None = None,
             cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """`unetdist ARGS` in this process: (returncode, stdout, stderr) as a shell would see them.

    An uncaught exception prints its traceback to the captured stderr and exits 1, like the
    interpreter does, so tests that assert "no traceback" still mean something.
    """
    from unetdist.cli import main

    out, err = io.StringIO(), io.StringIO()
    with restored_process_state(env, cwd), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:
            code = _exit_code(e, err)
        except Exception:  # noqa: BLE001 - the interpreter's behaviour: traceback, exit 1
            traceback.print_exc(file=err)
            code = 1
    return subprocess.CompletedProcess(["unetdist", *args], code, out.getvalue(), err.getvalue())
