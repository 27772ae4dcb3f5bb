# turnstream developer tasks. `make` (or `make help`) lists them.
# Everything runs from the project venv, which `make venv` creates from pyproject.toml.

VENV ?= .venv
PYTHON ?= python3
PY = $(VENV)/bin/python
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed
GEN_DIR = src/turnstream/v1
DESCRIPTOR = descriptor/turnstream.binpb
# The per-record fast path as a module (core/fastpath.py writes it), compiled by setup.py.
FASTGEN = src/turnstream/core/fastgen.py

PYTEST_ARGS ?=
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv run migrate test test-polyglot gen descriptor gen-check lint fmt types check bench \
	bench-json bench-limits bench-analytics bench-pipeline bench-writer bench-fastpath \
	compile clean distclean

help: ## List the targets
	@echo "usage: make <target>   (the venv is $(VENV); VENV=... to use another)"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(STAMP) ## Create the venv and install turnstream[dev] (again when pyproject.toml changes)

# The stamp is written only after pip succeeds, so a failed install is retried next time.
# pip builds setup.py's compiled fast path too when a C compiler is present (see `compile`).
$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

run: venv ## Run the service on SQLite (./turnstream.db): gRPC :50051, HTTP :8080
	$(BIN)/turnstream serve

migrate: venv ## Apply database migrations (TURNSTREAM_DATABASE_URL, default SQLite)
	$(BIN)/turnstream migrate

# The fast path's property test runs twice: compiled (when built) in the full run, and here
# forced to pure Python, so both paths are held to the generic code.
test: venv ## Run the tests on SQLite and a throwaway PostgreSQL (PYTEST_ARGS=..., TURNSTREAM_TEST_DB=sqlite|postgresql|all)
	scripts/ensure-postgres.sh
	scripts/ensure-polyglot.sh
	TURNSTREAM_PURE_PYTHON=1 $(PY) -m pytest -q tests/property/test_fastpath.py
	$(PY) -m pytest $(PYTEST_ARGS)

# Part of `make test` too; this runs them alone (they need Node.js and Debian's Go packages,
# which scripts/ensure-polyglot.sh installs when run as root).
test-polyglot: venv ## Run only the Node and Go example workers against a real server (tests/polyglot)
	scripts/ensure-polyglot.sh
	$(PY) -m pytest tests/polyglot $(PYTEST_ARGS)

# protoc finds its plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) on PATH: put the venv's first.
# The descriptor set is generated from protos/ too, so `make gen` keeps it in step.
gen: venv ## Regenerate src/turnstream/v1, descriptor/turnstream.binpb and core/fastgen.py from protos/
	PATH="$(abspath $(BIN)):$$PATH" PYTHON=$(PY) scripts/gen.sh
	PYTHON=$(PY) scripts/descriptor.sh
	TURNSTREAM_PURE_PYTHON=1 $(PY) -m turnstream.core.fastpath > $(FASTGEN).tmp
	mv $(FASTGEN).tmp $(FASTGEN)

descriptor: venv ## Build only descriptor/turnstream.binpb (a descriptor set with imports and comments)
	PYTHON=$(PY) scripts/descriptor.sh

gen-check: gen ## Fail when the committed generated code or descriptor set differs from protos/
	@git diff --exit-code --stat -- $(GEN_DIR) $(DESCRIPTOR) $(FASTGEN) || \
		{ echo "error: $(GEN_DIR), $(DESCRIPTOR) or $(FASTGEN) is stale: run 'make gen' and" \
			"commit the result" >&2; exit 1; }
	@untracked=$$(git ls-files --others --exclude-standard -- $(GEN_DIR) $(DESCRIPTOR) $(FASTGEN)); \
	if [ -n "$$untracked" ]; then \
		echo "error: untracked generated files (run 'make gen', then commit them):" >&2; \
		echo "$$untracked" >&2; exit 1; \
	fi

lint: venv ## ruff check, ruff format --check, buf lint, buf format
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/buf lint
	$(BIN)/buf format --exit-code -d

fmt: venv ## Format and auto-fix Python and protos
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/buf format -w

types: venv ## mypy --strict over src/ (configured in pyproject.toml)
	$(BIN)/mypy

check: lint types gen-check test ## Everything CI runs: lint, types, gen-check, test

# pip install (make venv) compiles it already; this rebuilds it in place after `make gen` or an
# edit of core/fastrt.py (a stale build is not used: the server logs "pure Python (... stale)").
compile: venv ## Compile the per-record fast path (core/fastgen.py, core/fastrt.py) with mypyc
	$(PY) setup.py -q build_ext --inplace
	@$(PY) -c "from turnstream.core import fastpath; print('fast path:', fastpath.PATH)"

bench: venv ## Run the streaming benchmarks in bench/ (BENCH_ARGS=...)
	$(PY) -m bench.run $(BENCH_ARGS)

bench-writer: venv ## CPU µs per record of the writer alone, in process, both dialects (BENCH_ARGS=...)
	$(PY) -m bench.writer $(BENCH_ARGS)

bench-pipeline: venv ## CPU µs per record of the core pipeline, per stage, in process (BENCH_ARGS=...)
	$(PY) -m bench.pipeline $(BENCH_ARGS)

bench-fastpath: venv ## CPU µs per record of the fast path, pure Python vs compiled, one process (BENCH_ARGS=...)
	$(PY) -m bench.fastpath $(BENCH_ARGS)

bench-json: venv ## The JSON door beside gRPC Write, same run (BENCH_ARGS=...)
	$(PY) -m bench.json_door $(BENCH_ARGS)

bench-analytics: venv ## Read side: GetDashboard and GetExecution over 100,000 executions (BENCH_ARGS=...)
	$(PY) -m bench.analytics $(BENCH_ARGS)

bench-limits: venv ## Others' latency during a 100,000-record Write; RSS under ten 15 MiB Writes
	$(PY) -m bench.limits $(BENCH_ARGS)

clean: ## Remove caches and build output (keeps the venv)
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean ## clean, and remove the venv too
	rm -rf $(VENV)
