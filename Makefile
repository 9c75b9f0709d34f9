# jupyter-cc: the two promises of the README.
#   make demo   create .venv, install, run the main job on the embedded simulated TEE
#   make test   create .venv, install test dependencies, lint, type-check, run every suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

# Real parts the tests start: OpenSSH sshd (a stand-in CVM), swtpm + tpm2-tools (the vTPM).
APT_PACKAGES := openssh-server openssh-client swtpm swtpm-tools tpm2-tools

.PHONY: demo demo-verify test lint typecheck pytest bench clean system-deps

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -e '.[demo]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install -e '.[test,demo]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	@$(VENV)/bin/jupyter-cc kernelspec install-sim --sys-prefix >/dev/null
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) examples/run_demo.py

demo-verify: $(VENV)/.installed
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/verify-demo.sh

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check jupyter_cc tests benchmarks examples
	$(VENV)/bin/ruff format --check jupyter_cc tests benchmarks examples

typecheck: $(VENV)/.installed-test
	$(VENV)/bin/mypy

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "not root: cannot install$$missing; tests that need them skip (and fail under CI=true)"; \
	fi

pytest: $(VENV)/.installed-test system-deps
	$(PY) -m pytest

test: lint typecheck pytest

bench: $(VENV)/.installed-test
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
