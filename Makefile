# proximo: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
SEED ?= 1
DEMO_DIR ?= demo

.PHONY: demo test test-all install clean bench

$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned, so no later requirement pulls a CUDA build.
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q -e ".[dev,llm,atari,video,ray,export,wandb,multiagent]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/proximo train CartPole-v1 --preset cartpole --seed $(SEED) --run-dir $(DEMO_DIR)/cartpole-s$(SEED)
	$(VENV)/bin/proximo plot $(DEMO_DIR)/cartpole-s$(SEED) -o $(DEMO_DIR)/cartpole-s$(SEED)/curve.png
	@echo "learning curve: $(DEMO_DIR)/cartpole-s$(SEED)/curve.png"

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

bench: $(STAMP)
	$(PIP) install -q -e ".[bench]"
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs demo .pytest_cache
