# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# The data root for tests and the demo (CIFAR-10 archive); override with PRUNEKIT_DATA=...
export PRUNEKIT_DATA ?= $(abspath ../shared/data)

.PHONY: demo test install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, exactly these versions: they install from local disk, so no other build is downloaded.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	rm -rf runs/quickstart
	$(VENV)/bin/prunekit run recipes/quickstart.yaml --out runs/quickstart

bench: $(STAMP)
	$(PY) benchmarks/speedup.py

clean:
	rm -rf $(VENV) runs .pytest_cache
