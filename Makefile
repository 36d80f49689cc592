# Two commands do all set-up on a fresh machine with Python 3.11:
#   make demo   creates .venv, installs medfed, runs the four-hospital federation
#   make test   creates .venv, installs medfed with test extras, runs the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test venv clean mlflow-ui

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/medfed demo

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

mlflow-ui: venv
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.medfed/runs/mlflow.db --port 5000

clean:
	rm -rf $(VENV) .medfed .pytest_cache
