# mcvqa: `make demo` (offline CPU demo on easy-VQA with a tiny model) and `make test`.
# Everything runs from the project's own virtual environment, .venv/, built by `make install`.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed first and alone, only when it is not importable: on a CPU machine this picks the CPU
# build (on this workplace a local wheel), so requirements.txt's `torch>=2.6` never pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0
REQUIREMENTS := requirements.txt requirements-dev.txt
STAMP := $(VENV)/.installed

# ---- demo knobs (the training knobs are in configs/cpu_tiny.yaml) -----------------------------------
DEMO_DATA ?= data/easy_vqa
DEMO_TRAIN ?= 6000
DEMO_TEST ?= 1000
DEMO_SEED ?= 0
TINY_ARCH ?= qwen2_5_vl
TINY_MODEL ?= tiny_models/demo_$(TINY_ARCH)
TINY_HIDDEN ?= 128
TINY_LAYERS ?= 2
TINY_VISION_HIDDEN ?= 64
TINY_VISION_DEPTH ?= 2
DEMO_CONFIG ?= configs/cpu_tiny.yaml
DEMO_RUNS ?= runs/demo
DEMO_FOLDS ?= 1 2
DEMO_TRAIN_FLAGS ?=
DEMO_PREDICT_FLAGS ?= --tta --batch_size 64
DEMO_ENSEMBLE_FLAGS ?=
DEMO_THREADS ?= $(shell nproc 2>/dev/null || echo 2)
ACCELERATE_CPU := $(VENV)/bin/accelerate launch --config_file accelerate_configs/cpu.yaml --num_cpu_threads_per_process $(DEMO_THREADS)
DEMO_RUN := $(DEMO_RUNS)/$(notdir $(TINY_MODEL))
# Everything the demo needs is on disk: never ask a model hub.
DEMO_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_OFFLINE=1

.PHONY: install test demo demo-data demo-model clean distclean help

help:
	@echo "make install   build $(VENV) (torch first, then requirements*.txt); fast when up to date"
	@echo "make test      run the test suite (pytest)"
	@echo "make demo      CPU demo: easy-VQA sample -> tiny model -> 2 folds -> predict --tta -> ensemble -> accuracy"
	@echo "make clean     remove the demo's data, model and runs ($(DEMO_RUNS)); your own runs/ stay"
	@echo "make distclean also removes $(VENV)"

install: $(STAMP)

$(STAMP): $(REQUIREMENTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -r requirements.txt -r requirements-dev.txt
	@$(PY) -c "import torch, transformers, peft, accelerate; print('installed: torch', torch.__version__, \
	  '| transformers', transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__)"
	@touch $@

test: install
	$(PY) -m pytest -q tests

demo-data: install
	$(PY) data/prepare_easy_vqa.py --out $(DEMO_DATA) --n_train $(DEMO_TRAIN) --n_test $(DEMO_TEST) --seed $(DEMO_SEED)

demo-model: install
	$(PY) tools/make_tiny_model.py --arch $(TINY_ARCH) --out $(TINY_MODEL) --hidden_size $(TINY_HIDDEN) \
	  --num_layers $(TINY_LAYERS) --vision_hidden_size $(TINY_VISION_HIDDEN) --vision_depth $(TINY_VISION_DEPTH)

demo: install
	@start=$$(date +%s); \
	set -e; \
	rm -rf $(DEMO_RUN) $(DEMO_RUNS)/submission.csv; \
	$(MAKE) --no-print-directory demo-data demo-model; \
	for k in $(DEMO_FOLDS); do \
	  echo "== training fold $$k"; \
	  $(DEMO_ENV) $(ACCELERATE_CPU) train_lora.py --config $(DEMO_CONFIG) --model_name_or_path $(TINY_MODEL) \
	    --data_dir $(DEMO_DATA) --output_dir $(DEMO_RUN) --fold $$k $(DEMO_TRAIN_FLAGS); \
	done; \
	echo "== predicting the test set"; \
	$(DEMO_ENV) $(PY) predict.py --data_dir $(DEMO_DATA) --output_dir $(DEMO_RUN) $(DEMO_PREDICT_FLAGS); \
	echo "== ensembling the folds"; \
	$(DEMO_ENV) $(PY) ensemble.py --output_dir $(DEMO_RUNS) --data_dir $(DEMO_DATA) $(DEMO_ENSEMBLE_FLAGS); \
	echo "demo took $$(( ($$(date +%s) - start) / 60 ))m$$(( ($$(date +%s) - start) % 60 ))s"; \
	$(PY) tools/score_submission.py --submission $(DEMO_RUNS)/submission.csv --answers $(DEMO_DATA)/test_answers.csv

clean:
	rm -rf $(DEMO_RUNS) $(DEMO_DATA) $(TINY_MODEL) .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
