# Quick start: `make demo` runs the pipeline on the built-in sample scene; `make test` runs the test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_out

.PHONY: demo test lint typecheck unit install clean

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
	$(BIN)/python -m pytest -q

test: lint typecheck unit

clean:
	rm -rf $(DEMO_OUT) runs/demo .pytest_cache .mypy_cache .ruff_cache
