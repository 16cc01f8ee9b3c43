# Every target does its own set-up: a virtual environment in the checkout, torch
# installed before anything that needs it (a plain `torch` requirement would pull
# a multi-GB CUDA build), then the project and its test tools.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# deramos-serve runs in its own environment: nvidia-pytriton pins numpy<2, while Ray Data's
# pyarrow and the training stack use numpy 2. The tests in .venv start the server from here.
SERVE_VENV := .venv-serve
TORCH  ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: test demo default-model ablation bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[export,test,ray,triton-client]"
	touch $@

$(SERVE_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install -q -e ".[serve]"
	touch $@

test: $(VENV)/.installed $(SERVE_VENV)/.installed
	$(PY) -m pytest -q tests

demo: $(VENV)/.installed
	BIN=$(VENV)/bin bash scripts/demo.sh

default-model: $(VENV)/.installed
	BIN=$(VENV)/bin bash scripts/train_default_model.sh

ablation: $(VENV)/.installed
	$(PY) -m deramos.ablation --out build/ablation --report docs/ablation.md

bench: $(VENV)/.installed
	$(VENV)/bin/deramos-bench --preset paper --batch-sizes 4 --clip-seconds 30 --seconds 30 --json build/bench-paper.json

clean:
	rm -rf $(VENV) $(SERVE_VENV) build *.egg-info
