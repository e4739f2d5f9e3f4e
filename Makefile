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

# ---- demo knobs (the training knobs are in configs/cpu_lora_demo.yaml) ------------------------------
# The demo fine-tunes a committed small pretrained base (models/easy_vqa_base, made by bench/pretrain_tiny.py:
# its command, seed and data split are in its pretraining.json) with LoRA, as a user fine-tunes a Qwen checkpoint.
DEMO_DATA ?= data/easy_vqa
DEMO_TRAIN ?= 0
DEMO_TEST ?= 1000
DEMO_SEED ?= 0
DEMO_BASE ?= models/easy_vqa_base
DEMO_CONFIG ?= configs/cpu_lora_demo.yaml
DEMO_RUNS ?= runs/demo
DEMO_FOLDS ?= 1
DEMO_TRAIN_FLAGS ?=
DEMO_PREDICT_FLAGS ?= --tta --tta_scales 1.0 --batch_size 256 --progress false
DEMO_ENSEMBLE_FLAGS ?=
DEMO_THREADS ?= $(shell nproc 2>/dev/null || echo 2)
ACCELERATE_CPU := $(VENV)/bin/accelerate launch --config_file accelerate_configs/cpu.yaml --num_cpu_threads_per_process $(DEMO_THREADS)
DEMO_RUN := $(DEMO_RUNS)/$(notdir $(DEMO_BASE))
# Everything the demo needs is on disk: never ask a model hub.
DEMO_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=$(DEMO_THREADS)

.PHONY: install test demo demo-data clean distclean help

help:
	@echo "make install   build $(VENV) (torch first, then requirements*.txt); fast when up to date"
	@echo "make test      run the test suite (pytest)"
	@echo "make demo      CPU demo: easy-VQA -> the committed tiny base's zero-shot accuracy -> LoRA fold 1 -> predict --tta -> ensemble -> accuracy"
	@echo "make clean     remove the demo's data and runs ($(DEMO_RUNS)); your own runs/ and the committed base stay"
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

demo: install
	@start=$$(date +%s); \
	set -e; \
	rm -rf $(DEMO_RUN) $(DEMO_RUNS)/submission.csv; \
	$(MAKE) --no-print-directory demo-data; \
	echo "== the base before fine-tuning (4 options: chance is 0.25)"; \
	$(DEMO_ENV) $(PY) tools/zero_shot.py --config $(DEMO_CONFIG) --model_name_or_path $(DEMO_BASE) \
	  --data_dir $(DEMO_DATA) --use_cpu true --batch_size 256; \
	for k in $(DEMO_FOLDS); do \
	  echo "== training fold $$k"; \
	  $(DEMO_ENV) $(ACCELERATE_CPU) train_lora.py --config $(DEMO_CONFIG) --model_name_or_path $(DEMO_BASE) \
	    --data_dir $(DEMO_DATA) --output_dir $(DEMO_RUN) --fold $$k $(DEMO_TRAIN_FLAGS); \
	done; \
	echo "== predicting the test set"; \
	$(DEMO_ENV) $(PY) predict.py --data_dir $(DEMO_DATA) --output_dir $(DEMO_RUN) $(DEMO_PREDICT_FLAGS); \
	echo "== ensembling the folds"; \
	$(DEMO_ENV) $(PY) ensemble.py --output_dir $(DEMO_RUNS) --data_dir $(DEMO_DATA) \
	  --files $(DEMO_RUN)/fold*/test_probs.csv $(DEMO_ENSEMBLE_FLAGS); \
	echo "demo took $$(( ($$(date +%s) - start) / 60 ))m$$(( ($$(date +%s) - start) % 60 ))s"; \
	$(PY) tools/score_submission.py --submission $(DEMO_RUNS)/submission.csv --answers $(DEMO_DATA)/test_answers.csv

clean:
	rm -rf $(DEMO_RUNS) $(DEMO_DATA) .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
