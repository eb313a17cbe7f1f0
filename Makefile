# One entry point for people and CI. `make dev` runs Nexus locally, `make check` runs
# exactly what CI runs. Both bootstrap the virtual environment on first use. Recipes are
# silent on stdout, so that `make dev`'s only line there is NEXUS READY {json}.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: dev check test lint lock clean

$(STAMP): pyproject.toml requirements.lock
	@echo "installing Nexus and its pinned dependencies into $(VENV) ..." >&2
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip >&2
	@$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]' >&2
	@touch $(STAMP)

dev: $(STAMP)
	@$(BIN)/nexus dev $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP)
	$(BIN)/pytest $(ARGS)

check: lint test

# Re-pin every transitive dependency after changing pyproject.toml.
lock:
	rm -rf $(VENV)-lock && $(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install --quiet -e '.[dev]'
	$(VENV)-lock/bin/pip freeze --exclude-editable --exclude nexus | sort > requirements.lock
	rm -rf $(VENV)-lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .import_linter_cache
