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

.PHONY: test test-slow test-latest lock demo default-model small-model ablation ablation-small bench clean musicnn-weights musicnn-parity realmusic realmusic-model

# TensorFlow only converts musicnn's checkpoints and checks the port against them: its own
# environment, never imported by the package. musicnn's metadata pins numpy < 1.17, hence --no-deps.
TF_VENV := .venv-tf
TF_PY   := $(TF_VENV)/bin/python

# The test environments install exactly the versions the suite passed with: requirements/*.lock,
# every release pinned with its sha256 (pip --require-hashes), written by `make lock` (scripts/lock.py).
# Torch comes first and apart (TORCH), then the locked set, then this project without dependencies;
# `pip check` proves the set agrees with pyproject's bounds. `make test-latest` tries the newest releases.
PIP_VERSION := 26.3
LOCK_PYTHON := 3.11
TEST_LOCK   := requirements/test.lock
SERVE_LOCK  := requirements/serve.lock
CHECK_LOCK_PYTHON = @$(1) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(0 if v == "$(LOCK_PYTHON)" else \
	f"error: requirements/*.lock were made on Python $(LOCK_PYTHON), this is {v}: use PYTHON=python$(LOCK_PYTHON), or make test-latest")'

$(VENV)/.installed: pyproject.toml Makefile $(TEST_LOCK)
	$(call CHECK_LOCK_PYTHON,$(PYTHON))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "pip==$(PIP_VERSION)"
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --require-hashes -r $(TEST_LOCK)
	$(PY) -m pip install -q --no-deps -e ".[export,test,ray,triton-client]"
	$(PY) -m pip check
	touch $@

$(SERVE_VENV)/.installed: pyproject.toml Makefile $(SERVE_LOCK)
	$(call CHECK_LOCK_PYTHON,$(PYTHON))
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q "pip==$(PIP_VERSION)"
	$(SERVE_VENV)/bin/python -m pip install -q --require-hashes -r $(SERVE_LOCK)
	$(SERVE_VENV)/bin/python -m pip install -q --no-deps -e ".[serve]"
	$(SERVE_VENV)/bin/python -m pip check
	touch $@

# The suite against the newest releases a fresh install takes today (not in CI): a new numpy or
# onnxruntime is tried on purpose. When it passes, `make lock VENV=.venv-latest SERVE_VENV=.venv-serve-latest`.
LATEST       := .venv-latest
SERVE_LATEST := .venv-serve-latest
test-latest:
	rm -rf $(LATEST) $(SERVE_LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q "$(TORCH)"
	$(LATEST)/bin/python -m pip install -q --upgrade -e ".[export,test,ray,triton-client]"
	$(PYTHON) -m venv $(SERVE_LATEST)
	$(SERVE_LATEST)/bin/python -m pip install -q --upgrade pip
	$(SERVE_LATEST)/bin/python -m pip install -q --upgrade -e ".[serve]"
	$(LATEST)/bin/python -m pip freeze --exclude-editable | grep -i -E '^(numpy|onnx|onnxruntime|scipy|transformers|tokenizers|ray|pyarrow)=='
	DERAMOS_SERVE_BIN=$(CURDIR)/$(SERVE_LATEST)/bin/deramos-serve $(LATEST)/bin/python -m pytest -q tests

# Rewrite the locks from environments that passed the suite (needs the package index).
lock:
	python3 scripts/lock.py --python $(PY) --out $(TEST_LOCK)
	python3 scripts/lock.py --python $(SERVE_VENV)/bin/python --out $(SERVE_LOCK)

# The suite without the tests marked slow (each over ~8 s: an export of the musicnn model, Ray
# clusters, the paper preset, the INT8 search); `make test-slow` runs those. CI runs both.
test: $(VENV)/.installed $(SERVE_VENV)/.installed
	$(PY) -m pytest -q -m "not slow" tests

test-slow: $(VENV)/.installed $(SERVE_VENV)/.installed
	$(PY) -m pytest -q -m slow tests

demo: $(VENV)/.installed
	BIN=$(VENV)/bin bash scripts/demo.sh

# The embedded default model (musicnn preset on real music + a synthetic corpus; docs/realmusic.md),
# written into src/deramos/default_model/.
default-model: $(VENV)/.realmusic
	BIN=$(VENV)/bin INSTALL=1 bash scripts/train_realmusic_model.sh

# The previous default: the `small` preset, pre-trained and trained on deramos-synth only.
small-model: $(VENV)/.installed
	BIN=$(VENV)/bin bash scripts/train_default_model.sh

# The paper's claim on real music (docs/ablation.md): the corpora `make default-model` trains and
# evaluates on, then 4 losses x 3 seeds of the musicnn preset with the default model's settings, then
# DeRA-MOS and point-wise without the TA contrast term (the control in docs/ablation.md, added by hand).
ablation: $(VENV)/.realmusic
	BIN=$(VENV)/bin WORK=build/ablation/corpora CORPORA_ONLY=1 bash scripts/train_realmusic_model.sh
	$(PY) -m deramos.training.ablation --preset musicnn --data build/ablation/corpora/merged \
		--heldout real=build/ablation/corpora/real-heldout --heldout synthetic=build/ablation/corpora/heldout \
		--epochs 30 --batch-size 24 --lr 1e-3 --counterfactual-prompts 8 --contrast-weight 1 \
		--out build/ablation --report docs/ablation.md
	$(PY) -m deramos.training.ablation --preset musicnn --data build/ablation/corpora/merged \
		--heldout real=build/ablation/corpora/real-heldout --heldout synthetic=build/ablation/corpora/heldout \
		--epochs 30 --batch-size 24 --lr 1e-3 --counterfactual-prompts 8 --contrast-weight 0 --losses dera,pointwise \
		--cache-dir build/ablation/cache --out build/ablation-nocontrast --report build/ablation-nocontrast/ablation.md

# The earlier ablation: the `small` preset on a synthetic corpus, its encoder pre-trained here.
ablation-small: $(VENV)/.installed
	$(PY) -m deramos.training.ablation --out build/ablation-small --report docs/ablation-small.md

bench: $(VENV)/.installed
	$(VENV)/bin/deramos-bench --preset paper --batch-sizes 4 --clip-seconds 30 --seconds 30 --json build/bench-paper.json

$(TF_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(TF_VENV)
	$(TF_PY) -m pip install -q --upgrade pip
	$(TF_PY) -m pip install -q --no-deps "musicnn==0.1.0"
	$(TF_PY) -m pip install -q "tensorflow-cpu==2.21.0" "librosa>=0.10" "safetensors>=0.4" "soundfile>=0.12"
	touch $@

musicnn-weights: $(TF_VENV)/.installed
	$(TF_PY) scripts/musicnn_tf.py convert --out src/deramos/musicnn_weights

# Real clips (music21 scores through fluidsynth) -> TensorFlow reference -> the port, <= 1e-4.
musicnn-parity: $(TF_VENV)/.installed $(VENV)/.realmusic
	$(PY) scripts/musicnn_parity.py clips --out build/musicnn-parity/clips
	$(TF_PY) scripts/musicnn_tf.py reference --out build/musicnn-parity/reference build/musicnn-parity/clips/*.wav
	$(PY) scripts/musicnn_parity.py compare --reference build/musicnn-parity/reference --report build/musicnn-parity/report.json

# Real-music corpora need music21 (PyPI) and fluidsynth + General-MIDI soundfonts (Debian).
$(VENV)/.realmusic: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[realmusic]"
	touch $@

# Real-music training set and a held-out set from disjoint sources (audio generated, not committed).
realmusic: $(VENV)/.realmusic
	$(VENV)/bin/deramos-realmusic corpus --set train --out build/realmusic/train --no-progress
	$(VENV)/bin/deramos-realmusic corpus --set heldout --out build/realmusic/heldout --clips-per-system 25 --pieces 40 --no-progress

# The same recipe as default-model, without installing the result (INSTALL=1 installs it).
realmusic-model: $(VENV)/.realmusic
	BIN=$(VENV)/bin bash scripts/train_realmusic_model.sh

clean:
	rm -rf $(VENV) $(SERVE_VENV) $(TF_VENV) build *.egg-info
