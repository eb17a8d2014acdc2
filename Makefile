# `make test` and `make demo` bootstrap .venv on a fresh machine; re-running them installs nothing new.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: demo test lint bench venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)  # none yet, or one cut short
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,deepspeed,eval,gguf,peft]"
	touch $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(VENV)/bin/lightning-unlearn demo --output demo-output

test: $(STAMP)
	$(OFFLINE) $(PY) -m ruff check lightning_unlearn tests benchmarks examples
	$(OFFLINE) $(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check lightning_unlearn tests benchmarks
	$(PY) -m ruff format --check lightning_unlearn tests benchmarks

bench: $(STAMP)
	$(OFFLINE) $(PY) benchmarks/memorization_speed.py
