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
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: install
	$(PY) examples/seed_dropout.py

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/run_all.py

lint: install
	$(PY) -m ruff check hookwrap tests examples benchmarks
	$(PY) -m mypy hookwrap

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
