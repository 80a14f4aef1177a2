# facesynth: `make demo` runs the main job on small defaults, `make test` runs the tests.
# Both install everything first (`make setup`): system packages with apt-get, Python packages in .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYOPENGL_PLATFORM ?= osmesa

.PHONY: setup test demo bench clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) bash scripts/setup.sh
	touch $(STAMP)

test: setup
	$(PY) -m pytest tests

demo: setup
	bash scripts/demo.sh

bench: setup
	for b in benchmarks/*.py; do [ "$$(basename $$b)" = common.py ] || $(PY) $$b; done

clean-venv:
	rm -rf $(VENV)
