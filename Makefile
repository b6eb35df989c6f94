# Two commands for a fresh machine:  `make series` (set up, then run the five notebooks)
# and `make test` (set up, then the test suite). `make lab` opens the notebooks in JupyterLab.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# The pinned builds install from this project's CI machines' disk; elsewhere any torch >= 2.3 works.
TORCH ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=

.PHONY: setup series test lab clean-results

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

series: setup
	$(PY) -m anomalymap_helpers run $(ARGS)

test: setup
	$(PY) -m pytest

lab: setup
	$(PY) -m jupyter lab notebooks

clean-results:
	rm -rf results/default
