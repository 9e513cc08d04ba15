# hookwrap developer commands. `make test` and `make demo` build .venv themselves.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hookwrap-install-stamp
.PHONY: install demo test bench lint clean

install: $(STAMP)

# Idempotent: re-runs only when the pins or the project metadata change.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[torch,dev]'
	# steering-vectors pins transformers<5; it runs with ours, so it goes in without its dependencies
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt steering-vectors
	# the wheels of the torch-free gate (hookwrap's plain dependencies), so that a test installs
	# the gate in a fresh venv with no network (tests/test_examples.py)
	$(PY) -m pip download --quiet --disable-pip-version-check -c constraints.txt -d $(VENV)/gate-wheels . 2>/dev/null
	@touch $(STAMP)

# The seed article through the command line: inventory, conversion report, files, parity.
SEED := examples/seed_dropout.py:build
demo: install
	$(VENV)/bin/hookwrap inspect $(SEED)
	$(VENV)/bin/hookwrap convert $(SEED) -o out/seed.safetensors
	$(VENV)/bin/hookwrap export $(SEED) -o out/seed.onnx --dynamic-batch --check

test: install
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: install
	$(PY) benchmarks/run_all.py

lint: install
	$(PY) -m ruff check hookwrap tests examples benchmarks
	$(PY) -m mypy hookwrap
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache *.egg-info
