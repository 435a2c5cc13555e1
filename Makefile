# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The manifest scanner (checkov) has a large dependency tree of its own: it lives in its own venv.
SCAN_VENV := .venv-scan
SCAN_STAMP := $(SCAN_VENV)/.installed

.PHONY: run test bench fuzz setup clean

$(STAMP): pyproject.toml setup.py processor/_wire.c processor/_trace_table.c processor/_trace_table.h processor/_user_agents.c processor/_user_agents.h
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(SCAN_STAMP): deploy/scan-requirements.txt
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SCAN_VENV)/bin/python -m pip install --quiet -r deploy/scan-requirements.txt
	touch $(SCAN_STAMP)

setup: $(STAMP) $(SCAN_STAMP)

## Run the processor on the embedded default: no backend, forwarded requests printed to stdout.
run: $(STAMP)
	$(BIN)/otlp-triage serve

## Set up and run the test suite.
test: $(STAMP) $(SCAN_STAMP)
	$(BIN)/python -m pytest -q

## Reproducible load through the processor vs a bytes relay and the naive SDK pipeline.
## BENCH_ARGS passes options on, e.g. BENCH_ARGS="--soak 600" (10 minutes of steady load, RSS over time).
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python tests/bench/run.py $(BENCH_ARGS)

## Coverage-guided fuzzing (atheris) of the decoders, classifier and rules, longer than in CI.
FUZZ_SECONDS ?= 300
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/run.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) $(SCAN_VENV) .pytest_cache build *.egg-info
