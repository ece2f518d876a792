# Everything runs from .venv/ in the repository root; `make test` and `make demo` create it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo demo-model bench lock clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

# The main job on the embedded default: the detect-changes flow on the demo catalog with the demo model.
demo: install
	$(BIN)/dsqnet detect --out runs

# Rebuild the committed demo model (flows/assets/dsqnet_demo.safetensors) from the demo's training set.
demo-model: install
	$(BIN)/dsqnet demo-data --out runs/demo-data
	$(BIN)/dsqnet train --config demo --data-root runs/demo-data/training
	cp runs/train/demo/last.safetensors flows/assets/dsqnet_demo.safetensors

bench: install
	$(BIN)/python bench/model_throughput.py

# Re-resolve the newest compatible versions into constraints.txt (needs PyPI).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e ".[test]"
	( echo '# Versions CI and every machine install (pip install -c constraints.txt). Regenerate with `make lock`.'; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable ) > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) runs .pytest_cache
