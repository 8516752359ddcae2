# proximo: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# requirements.txt pins the CPU torch wheel; as constraints (-c) on every install line, nothing replaces it.
PIP := $(PY) -m pip
CONSTRAINED := $(PIP) install -q -c requirements.txt
CORE_STAMP := $(VENV)/.installed-core
STAMP := $(VENV)/.installed
# Every extra the test suite and the docs build use.
# bench, bench-llm: the peers whose own code the parity tests run (sb3-contrib: tests/test_recurrent_reference.py;
# TRL: tests/test_llm_trl_parity.py), pinned in constraints-test.txt.
ALL_EXTRAS := dev,docs,llm,atari,video,ray,export,wandb,multiagent,bench,bench-llm
SEED ?= 1
DEMO_DIR ?= demo

.PHONY: demo test test-all install docs clean bench

# The core install: what `make demo` needs (torch, gymnasium, proximo and its plotting).
$(CORE_STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned, so no later requirement pulls a CUDA build.
	$(PIP) install -q -r requirements.txt
	$(CONSTRAINED) -e .
	touch $(CORE_STAMP)

# Everything: the tests, the docs and every optional feature.
$(STAMP): $(CORE_STAMP) constraints-test.txt
	$(CONSTRAINED) -c constraints-test.txt -e ".[$(ALL_EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(CORE_STAMP)
	$(VENV)/bin/proximo train CartPole-v1 --preset cartpole --seed $(SEED) --run-dir $(DEMO_DIR)/cartpole-s$(SEED)
	$(VENV)/bin/proximo plot $(DEMO_DIR)/cartpole-s$(SEED) -o $(DEMO_DIR)/cartpole-s$(SEED)/curve.png
	@echo "learning curve: $(DEMO_DIR)/cartpole-s$(SEED)/curve.png"

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

# The documentation site, built strictly: a broken link or API reference fails (CI runs this).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(CONSTRAINED) -e ".[bench]"
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs demo site .pytest_cache
