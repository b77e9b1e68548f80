from tests.fuzz.oracle import TALLY


def pytest_terminal_summary(terminalreporter) -> None:
    """The tally `make fuzz` reports (also after `make test`, when the fuzz tests ran)."""
    if TALLY.cases:
        terminalreporter.write_line(TALLY.line())
