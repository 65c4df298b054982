# detain — the two commands of the README, plus the slow ones kept apart.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test test-all lint soak bench bench-detection system-deps setup-backends clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m compileall -q src >/dev/null
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

## make run: a fresh venv, detain installed, one example run on the default backend
run: $(VENV)/.installed
	$(BIN)/detain doctor
	$(BIN)/detain run examples/hello.py

system-deps:
	bash scripts/install-system-deps.sh

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench examples

## backends that need preparing (as root, where their packages were installed)
setup-backends: $(VENV)/.installed
	@if [ "$$(id -u)" -eq 0 ] && command -v qemu-system-x86_64 >/dev/null; then \
		$(BIN)/detain setup microvm; \
	else echo "setup-backends: microvm not prepared (needs root and qemu-system-x86)"; fi

## make test: system packages (as root), test dependencies, lint, the whole suite
test: system-deps $(VENV)/.installed-test lint setup-backends
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make test-all: also the cases the default run leaves out on slow (emulated) backends
test-all: system-deps $(VENV)/.installed-test lint setup-backends
	DETAIN_TEST_EVERY_CASE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

## make soak: the long reliability runs (2,000 runs cold and 2,000 on warm spares)
soak: system-deps $(VENV)/.installed-test
	$(BIN)/python -m pytest -m soak -p no:randomly $(PYTEST_ARGS)

## make bench: start-up per backend against the bare interpreter (API, CLI, detain serve),
## and the HTTP service's submissions/s and latency, embedded and scaled out
bench: system-deps $(VENV)/.installed-test
	$(BIN)/python -m compileall -q src >/dev/null
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/service.py

## make bench-detection: static recall and benign false positives on the project's own corpus
## (malicious sdists built from bench/corpus/, popular sdists fetched once into
## ~/.cache/detain/bench-corpus); BENCH_ARGS=--dynamic adds detain package per sdist
bench-detection: $(VENV)/.installed
	$(BIN)/python bench/detection.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
