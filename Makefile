# One entry point for people and CI. `make dev` runs Nexus locally, `make check` runs
# exactly what CI runs. Both bootstrap the virtual environment on first use. Recipes are
# silent on stdout, so that `make dev`'s only line there is NEXUS READY {json}.
# The virtual environment holds the three distributions of this repository, editable: the
# server (.), the SDK with the `nexus` command (sdk/) and the development tools (dev/).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: dev check test lint lock clean devcluster-compiled devcluster-sources

DISTRIBUTIONS := -e ./sdk -e '.[dev]' -e ./dev

$(STAMP): pyproject.toml sdk/pyproject.toml dev/pyproject.toml requirements.lock
	@echo "installing Nexus and its pinned dependencies into $(VENV) ..." >&2
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip >&2
	@$(BIN)/pip install --quiet -c requirements.lock $(DISTRIBUTIONS) >&2
	@# a venv from before the SDK owned the `nexus` script loses it with the old server
	@test -e $(BIN)/nexus || $(BIN)/pip install --quiet --no-deps --force-reinstall -e ./sdk >&2
	@touch $(STAMP)

dev: $(STAMP)
	@$(BIN)/nexus dev $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP)
	$(BIN)/pytest -n 4 $(ARGS)

check: lint test

# Re-pin every transitive dependency after changing a pyproject.toml. setuptools is kept
# (--all) as the tests build wheels with it; pip and our own distributions are not pinned.
# Pins with an environment marker are kept as they are: what only other machines need
# (another Python, another platform), which tests/test_platforms.py finds unpinned.
lock:
	rm -rf $(VENV)-lock && $(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install --quiet $(DISTRIBUTIONS)
	{ $(VENV)-lock/bin/pip freeze --all --exclude-editable --exclude pip \
	    --exclude nexus --exclude nexus-sdk --exclude nexus-dev; \
	  grep ';' requirements.lock || true; } | sort > requirements.lock.new
	mv requirements.lock.new requirements.lock
	rm -rf $(VENV)-lock

# The local cluster's hot modules compiled with mypyc (a C compiler needed): opt-in, ignored
# once a source changes (nexus_dev.cluster.compiled); devcluster-sources removes them.
devcluster-compiled: $(STAMP)
	@$(BIN)/python -P dev/nexus_dev/cluster/compiled.py build >&2

devcluster-sources: $(STAMP)
	@$(BIN)/python -P dev/nexus_dev/cluster/compiled.py clean

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .import_linter_cache
	rm -f dev/nexus_dev/cluster/*.so dev/nexus_dev/cluster/compiled.json
