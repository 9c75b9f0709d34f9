# jupyter-cc: the two promises of the README.
#   make demo   create .venv, install, run the main job on the embedded simulated TEE
#   make test   create .venv, install test dependencies, lint, type-check, run every suite
#               (pytest, the lab extension's unit tests, the galata UI tests in Chromium)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

# Real parts the tests start: OpenSSH sshd (a stand-in CVM), swtpm + tpm2-tools (the vTPM),
# Chromium (the galata UI tests drive it headless; Playwright never downloads a browser here).
APT_PACKAGES := openssh-server openssh-client swtpm swtpm-tools tpm2-tools chromium
CHROMIUM_PATH ?= /usr/bin/chromium
# jlpm (yarn, from the jupyter-builder package in the venv) and node, with the venv's jupyter.
NODE_ENV_PATH := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"
# The lab extension is built by `pip install` (hatch-jupyter-builder); rebuild when it changes.
LABEXT_SOURCES := $(wildcard labextension/src/*.ts labextension/style/*) labextension/package.json \
	labextension/tsconfig.json labextension/yarn.lock

.PHONY: demo demo-verify test lint typecheck pytest unit jstest uitest bench clean system-deps

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml $(LABEXT_SOURCES) | $(PY)
	$(PIP) install -e '.[demo]'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(LABEXT_SOURCES) | $(PY)
	$(PIP) install -e '.[test,demo]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	@$(VENV)/bin/jupyter-cc kernelspec install-sim --sys-prefix >/dev/null
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) examples/run_demo.py

demo-verify: $(VENV)/.installed
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/verify-demo.sh

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check jupyter_cc tests benchmarks examples ui-tests/jupyter_server_test_config.py
	$(VENV)/bin/ruff format --check jupyter_cc tests benchmarks examples ui-tests/jupyter_server_test_config.py

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

# configurable-http-proxy (npm) for the JupyterHub tests, from the npm registry.
CHP := .ci/node/node_modules/.bin/configurable-http-proxy
$(CHP):
	npm install --no-audit --no-fund --prefix .ci/node configurable-http-proxy@5

pytest: $(VENV)/.installed-test system-deps $(CHP)
	$(PY) -m pytest

# The fast tests alone (tests/unit: nothing started beyond this process); `make test` runs all.
unit: $(VENV)/.installed-test
	$(PY) -m pytest tests/unit

# Unit tests of the lab extension's state logic (node:test; jlpm install is a no-op when current).
jstest: $(VENV)/.installed-test
	cd labextension && $(NODE_ENV_PATH) jlpm install --mode=skip-build >/dev/null && $(NODE_ENV_PATH) jlpm test

ui-tests/node_modules/.installed: ui-tests/package.json ui-tests/yarn.lock $(VENV)/.installed-test
	cd ui-tests && $(NODE_ENV_PATH) jlpm install --mode=skip-build
	touch $@

# galata (Playwright) in Debian's Chromium against a real JupyterLab with the extension.
uitest: ui-tests/node_modules/.installed system-deps
	@if [ ! -x "$(CHROMIUM_PATH)" ]; then \
		if [ "$$CI" = true ]; then echo "UI tests: no Chromium at $(CHROMIUM_PATH) (CI=true: failing)"; exit 1; fi; \
		echo "UI tests SKIPPED: no Chromium at $(CHROMIUM_PATH) (install Debian's chromium, or set CHROMIUM_PATH)"; \
		exit 0; \
	fi; \
	cd ui-tests && $(NODE_ENV_PATH) CHROMIUM_PATH="$(CHROMIUM_PATH)" jlpm playwright test

test: lint typecheck pytest jstest uitest

bench: $(VENV)/.installed-test
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
	rm -rf jupyter_cc/labextension labextension/node_modules labextension/lib labextension/build-test \
		labextension/tsconfig.tsbuildinfo ui-tests/node_modules ui-tests/test-results \
		ui-tests/playwright-report ui-tests/screenshots
