# Everything runs from .venv/ in the repository root; `make test` and `make demo` create it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench lock clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

# The main job until the detect flow lands: a synthetic georeferenced pair -> change map.
demo: install
	$(BIN)/dsqnet example-pair --out runs/example
	$(BIN)/dsqnet init-model dsqnet_swin_mini --out runs/example/model.safetensors
	$(BIN)/dsqnet predict --model runs/example/model.safetensors \
		--before runs/example/before.tif --after runs/example/after.tif \
		--out runs/example/change.tif --probabilities runs/example/change_prob.tif

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
