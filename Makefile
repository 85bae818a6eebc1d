# semsynth: `make demo` sets everything up and simulates a small dataset; `make test` runs the test suite (`make test-fast`: without the slow tests).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch==2.13.0 takes the local CPU wheel; a newer torch would pull gigabytes of CUDA packages.
	$(PY) -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) cli.py simulate configs/default.toml --n 8 --out out/demo --seed 0 --workers 2 --overwrite

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[bench]"
	$(PY) bench/bench_simulate.py
	$(PY) bench/bench_aggregate.py

clean:
	rm -rf out .pytest_cache
