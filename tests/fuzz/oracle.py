"""The property every fuzz case is held to, and the tally `make fuzz` prints.

A case is a call into unetdist on hostile input. It must end in success or in a `UserError`
whose message is one line. Anything else fails the case:
- another exception (a traceback for the user);
- a hang: the call runs past FUZZ_CASE_SECONDS (SIGALRM raises inside it; faulthandler kills
  the process if even that does not return);
- memory: the address space may grow by FUZZ_MEMORY_MB at most (RLIMIT_AS, set around the
  call only), so a 14 GB allocation fails at once as MemoryError and is reported as such;
- a write outside the case's folder: an audit hook sees every open-for-writing, rename,
  removal and folder creation Python makes and refuses the ones outside it (`tempfile`'s
  private temporaries are pointed inside the case's folder for the call).
"""

from __future__ import annotations

import faulthandler
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from unetdist.errors import UserError

CASE_SECONDS = float(os.environ.get("FUZZ_CASE_SECONDS", "20"))
MEMORY_BYTES = int(os.environ.get("FUZZ_MEMORY_MB", "2048")) * 2**20
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
                "os.truncate": (0,), "os.symlink": (1,), "os.link": (1,), "os.chmod": (0,),
                "os.utime": (0,), "shutil.copyfile": (1,), "shutil.rmtree": (0,),
                "shutil.move": (1,)}  # event -> arguments that name a path it changes


@dataclass
class Tally:
    cases: int = 0
    ok: int = 0
    user_errors: int = 0
    other: int = 0
    hangs: int = 0
    memory: int = 0
    writes_outside: int = 0

    def line(self) -> str:
        return (f"fuzz: {self.cases} cases run: {self.ok} ok, {self.user_errors} UserErrors, "
                f"{self.other} other exceptions, {self.hangs} hangs, {self.memory} over the "
                f"memory bound, {self.writes_outside} writes outside")


TALLY = Tally()


class Hang(BaseException):
    """Raised by SIGALRM; a BaseException so that `except Exception` cannot swallow it."""


class WriteOutside(BaseException):
    """Raised by the audit hook in place of a write outside the case's folder."""


_allowed: list[str] = []  # real paths a case may write under; empty = no case running
_violations: list[str] = []


def _outside(path: object) -> bool:
    if isinstance(path, int) or path is None:
        return False  # an fd: its open was checked
    real = os.path.realpath(os.fsdecode(path))
    return real != os.devnull and not any(real == a or real.startswith(a + os.sep)
                                          for a in _allowed)


def _audit(event: str, args: tuple) -> None:
    if not _allowed:
        return
    if event == "open":
        path, mode, flags = args
        writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                   else bool((flags or 0) & _WRITE_FLAGS))
        changed = [path] if writing else []
    else:
        changed = [args[i] for i in _PATH_EVENTS.get(event, ())]
    for path in changed:
        if _outside(path):
            _violations.append(f"{event} {path!r}")
            raise WriteOutside(f"{event} {path!r}")


sys.addaudithook(_audit)  # cannot be removed: inactive while _allowed is empty


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def _bounded(folder: Path):
    """Time, memory and write bounds around one call, all undone afterwards."""
    def on_alarm(signum, frame):
        raise Hang(f"still running after {CASE_SECONDS:g} s")

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    faulthandler.dump_traceback_later(CASE_SECONDS * 3 + 10, exit=True)
    outer, started = signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS), time.monotonic()
    cwd = os.getcwd()
    os.chdir(folder)  # relative paths land in the case's folder
    old_tmp, tempfile.tempdir = tempfile.tempdir, str(folder / ".tmp")
    os.makedirs(tempfile.tempdir, exist_ok=True)  # private temporaries (tempfile) stay inside
    _allowed[:] = [os.path.realpath(folder)]
    limit = _address_space() + MEMORY_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard < 0 else min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        _allowed.clear()
        tempfile.tempdir = old_tmp
        os.chdir(cwd)
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, old_handler)
        if outer[0] > 0:  # pytest-timeout's alarm for the whole test: give back what is left
            signal.setitimer(signal.ITIMER_REAL,
                             max(outer[0] - (time.monotonic() - started), 0.01), outer[1])


def run_case(call: Callable[[], object], folder: Path, what: str, tally: Tally = TALLY) -> str:
    """Run CALL under the bounds; 'ok' or 'user error', or AssertionError saying what broke."""
    tally.cases += 1
    _violations.clear()
    try:
        with _bounded(folder):
            call()
    except UserError as e:
        if _violations:  # refused by the hook, then reported as a clean error: still a write
            tally.writes_outside += 1
            raise AssertionError(f"{what}: wrote outside its folder: {_violations}") from e
        msg = str(e)
        if not msg.strip() or "\n" in msg or "\r" in msg:
            tally.other += 1
            raise AssertionError(f"{what}: UserError is not one line: {msg!r}") from e
        tally.user_errors += 1
        return "user error"
    except Hang as e:
        tally.hangs += 1
        raise AssertionError(f"{what}: hang: {e}") from None
    except WriteOutside as e:
        tally.writes_outside += 1
        raise AssertionError(f"{what}: wrote outside its folder: {e}") from None
    except MemoryError as e:
        tally.memory += 1
        raise AssertionError(f"{what}: more than {MEMORY_BYTES >> 20} MB asked") from e
    except Exception as e:
        if _violations:
            tally.writes_outside += 1
            raise AssertionError(f"{what}: wrote outside its folder: {_violations}") from e
        if "Insufficient memory" in str(e) or "Failed to allocate" in str(e):
            tally.memory += 1
        else:
            tally.other += 1
        raise AssertionError(f"{what}: {type(e).__name__}: {e}") from e
    if _violations:
        tally.writes_outside += 1
        raise AssertionError(f"{what}: wrote outside its folder: {_violations}")
    tally.ok += 1
    return "ok"
