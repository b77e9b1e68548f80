# `make test` and `make demo` set up .venv on first use; later runs reuse it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-seconds test-fast demo lint clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall only when the package metadata changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The tests start ~330 interpreters and two pytest workers. Where the environment sets
# PYTHONDONTWRITEBYTECODE (some containers do), each of them compiled unetdist from source again
# and each worker rewrote every test module's asserts again (~4 s of its start-up). So the
# package is byte-compiled first, as pip does for a regular install, and the tests may write
# caches (git-ignored __pycache__; a changed source is recompiled, never read stale). Compiling
# first also keeps a lazy import inside a fuzz case from writing outside the case's folder.
BYTECODE = $(BIN)/python -m compileall -q -j 0 unetdist tests && PYTHONDONTWRITEBYTECODE=

# Two pytest-xdist workers, a test module (or an xdist_group) to one worker, in the order of
# tests/conftest.py `_turn`: `exclusive` tests first (the other worker runs only light tests
# meanwhile), then light groups, then heavy groups longest first by tests/group_seconds.json.
# TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BYTECODE) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

# The full suite, rewriting tests/group_seconds.json from its own timings (commit the file when
# groups were added or their cost changed: it only orders the run, a stale file is never wrong).
test-seconds: $(STAMP)
	$(MAKE) test PYTEST_ARGS="--write-group-seconds=tests/group_seconds.json $(PYTEST_ARGS)"

# Unit tests and in-process CLI tests: nothing that trains or launches (tests/guard.py checks).
# Two pytest-xdist workers: a third of the tier's time is waiting on subprocesses and files.
FAST_MARKS := not slow and not dist and not slurm and not gpu
FAST_WORKERS ?= 2
test-fast: $(STAMP)
	$(BYTECODE) $(BIN)/python -m pytest -m "$(FAST_MARKS)" -n $(FAST_WORKERS) $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/unetdist demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check unetdist tests

clean-venv:
	rm -rf $(VENV)

# The long fuzz run (issue 24): FUZZ_CASES cases over every target in tests/fuzz, ending with
# the tally (cases run, UserErrors, other exceptions, hangs, writes outside).
FUZZ_CASES ?= 20000
.PHONY: fuzz
fuzz: $(STAMP)
	FUZZ_CASES=$(FUZZ_CASES) $(BIN)/python -m pytest tests/fuzz -q -p no:cacheprovider --timeout=0 $(PYTEST_ARGS)
