# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test install install-dev lint bench-quick clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# the CPU build of torch first: any other torch spec pulls gigabytes of CUDA packages
	$(PIP) install -q torch==2.13.0

install: $(PY)
	$(PIP) install -q -e ".[minigrid,plot]"

install-dev: $(PY)
	$(PIP) install -q -e ".[dev]"

demo: install
	$(PY) -m sb3_vlm demo

lint: install-dev
	$(PY) -m ruff check sb3_vlm tests benchmarks examples
	$(PY) -m ruff format --check sb3_vlm tests benchmarks examples
	$(PY) -m mypy

test: install-dev lint
	$(PY) -m pytest -q

bench-quick: install-dev
	$(PY) benchmarks/minigrid_distill.py --quick --out benchmarks/results/quick
	$(PY) benchmarks/sac_guidance.py --quick --out benchmarks/results/quick
	$(PY) benchmarks/sac_update_cost.py --quick --out benchmarks/results/quick
	$(PY) benchmarks/advisor_throughput.py --quick --out benchmarks/results/quick

clean:
	rm -rf $(VENV) demo_out .pytest_cache .mypy_cache .ruff_cache
