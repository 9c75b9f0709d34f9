# jupyter-cc: the two promises of the README.
#   make demo   create .venv, install, run the main job on the embedded simulated TEE
#   make test   create .venv, install test dependencies, lint, type-check, run every suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test lint typecheck pytest bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/verify-demo.sh

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check jupyter_cc tests benchmarks
	$(VENV)/bin/ruff format --check jupyter_cc tests benchmarks

typecheck: $(VENV)/.installed-test
	$(VENV)/bin/mypy

pytest: $(VENV)/.installed-test
	$(PY) -m pytest

test: lint typecheck pytest

bench: $(VENV)/.installed-test
	$(PY) benchmarks/bench_verify.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
