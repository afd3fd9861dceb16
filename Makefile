# Each public target installs what it needs first, so `make demo` or `make test` is all a fresh machine needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Real data beside the checkout when present (see ../shared/data/SOURCES.md); generated data otherwise.
MODELYARD_DATA ?= $(if $(wildcard ../shared/data/cmapss),$(abspath ../shared/data),)
export MODELYARD_DATA
DEMO_OUT ?= runs/demo

.PHONY: setup test test-all demo lint bench lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	# colossalai's metadata pins torch<=2.5.1; its real imports are in pyproject.toml.
	$(BIN)/pip install --quiet --no-deps colossalai==0.5.0
	touch $(STAMP)

test: setup
	$(BIN)/ruff check training serving streaming apps tests bench
	$(BIN)/python -m pytest -m "not slow"

test-all: setup
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/modelyard demo --out $(DEMO_OUT)

bench: setup
	$(BIN)/python bench/train_throughput.py

lint: setup
	$(BIN)/ruff check training serving streaming apps tests bench
	$(BIN)/ruff format --check training serving streaming apps tests bench

# Re-pin every dependency after changing pyproject.toml.
lock: setup
	$(BIN)/pip freeze --exclude-editable | grep -v -i '^colossalai==' > constraints.txt

clean:
	rm -rf $(VENV) runs
