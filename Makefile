# Quickstart targets. Each creates its own virtualenv (.venv) with the CPU build of torch
# installed first, so no dependency pulls a multi-GB CUDA build on a CPU-only machine.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
# On machines without a local torch wheel, e.g.: make demo PIP_TORCH_ARGS="--index-url https://download.pytorch.org/whl/cpu"
PIP_TORCH_ARGS ?=
PYTEST_ARGS ?=
# venv with the oldest transformers pyproject allows, for tests/integration/test_hf_compat_oldest.py
COMPAT_VENV ?= $(HOME)/.cache/threadsum-compat/transformers-oldest

BIN := $(VENV)/bin

.PHONY: demo test setup setup-dev browser compat-venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(PIP_TORCH_ARGS) "$(TORCH)"

$(VENV)/.setup-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[train,serve,track]"
	touch $@

$(VENV)/.setup-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[train,serve,track,sagemaker,dev,fast]"
	touch $@ $(VENV)/.setup-run

setup: $(VENV)/.setup-run
setup-dev: $(VENV)/.setup-dev

## Offline end-to-end demo on CPU: synthetic corpus -> prepare -> train -> evaluate -> summarize
demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/threadsum demo --out demo-output

## The full test suite (installs headless Chromium for the browser test when it can)
test: setup-dev browser compat-venv
	HF_HUB_OFFLINE=1 THREADSUM_COMPAT_VENV=$(COMPAT_VENV) $(BIN)/python -m pytest -ra $(PYTEST_ARGS)

## Build once (reused while tests/compat/oldest-transformers.txt and TORCH stay the same; ~1.5 min
## the first time). Exit 3 = no package index reachable: the compat test then skips and says why.
compat-venv: | $(BIN)/python
	$(BIN)/python tests/compat/make_venv.py $(COMPAT_VENV) --torch "$(TORCH)" --pip-torch-args "$(PIP_TORCH_ARGS)" || [ $$? -eq 3 ]

browser:
	@./scripts/install-browser.sh

clean:
	rm -rf $(VENV) demo-output outputs .pytest_cache
