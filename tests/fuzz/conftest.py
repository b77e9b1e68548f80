import dataclasses

from tests.fuzz.oracle import TALLY


def pytest_terminal_summary(terminalreporter) -> None:
    """The tally `make fuzz` reports (also after `make test`, when the fuzz tests ran; under
    pytest-xdist the workers send theirs to tests/conftest.py, which reports their sum)."""
    if TALLY.cases:
        terminalreporter.write_line(TALLY.line())


def pytest_sessionfinish(session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)  # on a pytest-xdist worker
    if workeroutput is not None and TALLY.cases:
        workeroutput["fuzz_tally"] = dataclasses.asdict(TALLY)
