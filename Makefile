# Quick start: `make demo` runs the pipeline on the built-in sample scene; `make test` runs the test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_out
# pytest-xdist worker processes for the tests (the heavy tests start processes of their own)
TEST_WORKERS ?= 2
# the tests start about 200 Python processes: with PYTHONDONTWRITEBYTECODE set (some machines set it), each would
# compile the project's modules again; the suite writes them once to __pycache__ (git-ignored) and reuses them
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest

.PHONY: demo test check lint typecheck unit install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python pipelines/demo.py --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check rs_deeplab pipelines tests bench docs
	$(BIN)/ruff format --check rs_deeplab pipelines tests bench docs

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	@rm -f .pytest-running
	$(PYTEST) -q -p tests.crashlog -n $(TEST_WORKERS) --dist worksteal || { rc=$$?; \
	  test ! -f .pytest-running || echo "pytest exited with $$rc while running $$(cat .pytest-running)"; \
	  df -h $${TMPDIR:-/tmp} | tail -1; exit $$rc; }

# mypy (about 40 s of one core) runs beside the suite instead of before it
test: lint
	@$(MAKE) --no-print-directory -j2 typecheck unit

# the inner loop (a few minutes): lint, then the tests not marked slow, stopping at the first failure
check: lint
	$(PYTEST) -q -x -m "not slow" -n $(TEST_WORKERS) --dist worksteal

clean:
	rm -rf $(DEMO_OUT) runs/demo .pytest_cache .mypy_cache .ruff_cache
