# Two commands do all the set-up on a machine with only Python >= 3.10:
#   make run    the main search on the bundled data (offline, CPU)
#   make test   the whole test suite (make test-fast: without the slow Ray/MLflow/cluster tests)
# The first creates .venv and installs the project into it; later ones reuse it (reinstalling when
# pyproject.toml changes). Packages the machine already has stay visible in .venv and are not fetched
# again (VENV_FLAGS=--system-site-packages); `make VENV_FLAGS= run` builds a venv that sees nothing.
# Nothing is installed outside .venv.

PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?= --system-site-packages
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Commands the tests start by name (ray) come from .venv first.
RUN := PATH="$(abspath $(VENV))/bin:$$PATH" $(PY)

.PHONY: run test test-fast venv clean

run: $(STAMP)
	$(RUN) tuning/search.py --space paper --dataset digits --model tiny --epoch-scale 0.2 --num-samples 12 --confirm-seeds 4

# Two test processes (pytest-xdist): the tests on the session's Ray and MLflow server in one, module by module in
# both (tests/conftest.py); `$(RUN) -m pytest -q` runs them in one process.
XDIST := -n 2 --dist loadgroup

test: $(STAMP)
	$(RUN) -m pytest -q $(XDIST)

test-fast: $(STAMP)
	$(RUN) -m pytest -q $(XDIST) -m "not slow"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

clean:
	rm -rf $(VENV)

# Mutation testing (mutation/run.py, settings in mutation/mutmut.cfg): mutmut over the modules where a silent bug
# changes a researcher's answer or loses data, each with its fast unit tests only; outside CI. Fails when a
# surviving mutant is neither killed by a test nor written down in mutation/equivalent.md.
#   make mutation                      every module;  make mutation MODULES="summary schedule"  some
MODULES ?=
MUTATION_JOBS ?= 2
.PHONY: mutation
mutation: $(STAMP)
	$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install -q "mutmut>=3.8,<4"
	$(RUN) mutation/run.py --jobs $(MUTATION_JOBS) $(MODULES)
