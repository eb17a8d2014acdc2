# `make test`, `make demo` and `make docs` bootstrap .venv on a fresh machine; re-running them installs nothing new.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: demo test test-fast docs lint bench venv browser

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)  # none yet, or one cut short
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,demo,docs,deepspeed,eval,gguf,peft]"
	touch $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(VENV)/bin/lightning-unlearn demo --output demo-output

# The documentation site, from scratch, with every warning an error: docs/_build/html/index.html.
docs: $(STAMP)
	$(OFFLINE) $(PY) -m sphinx -E -q -n -W --keep-going -b html docs docs/_build/html

# Debian's Chromium, in which the HTML report's tests load its pages; installed when missing (root, or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) docs browser
	$(OFFLINE) $(PY) -m ruff check lightning_unlearn tests benchmarks examples docs
	$(PY) -m mypy
	$(OFFLINE) $(PY) -m pytest -q

# Everything but the end-to-end runs (-m "not slow"): a few minutes, for the edit-test loop.
test-fast: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check lightning_unlearn tests benchmarks examples docs
	$(PY) -m mypy
	$(PY) -m ruff format --check lightning_unlearn tests benchmarks examples docs

bench: $(STAMP)
	$(OFFLINE) $(PY) benchmarks/memorization_speed.py
