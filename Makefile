# The two commands of the README's quick start, and what they need.
VENV    ?= .venv
PYTHON  ?= python3
BIN      = $(VENV)/bin

.PHONY: run test unit install install-test

run: install                ## install into .venv and run the daemon on its embedded defaults
	$(BIN)/mailgate serve

test:                       ## install what the tests need and run the whole suite (SQLite, then PostgreSQL)
	bash scripts/test.sh

unit: install-test           ## the unit tests alone (no process, no socket; SQLite): under a minute
	MAILGATE_TEST_DB=sqlite $(BIN)/pytest -q -n auto --dist loadfile tests/unit

install: $(BIN)/mailgate

# The package is compiled to bytecode at install, as `pip install .` leaves it: where Python
# may not write it at import (PYTHONDONTWRITEBYTECODE, a read-only tree under systemd), every
# start compiled mailgate anew — a third of a `deliver` handed to the daemon (issue 16).
$(BIN)/mailgate: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	$(BIN)/python -m compileall -q mailgate
	touch $@

install-test: $(VENV)/.test-installed

$(VENV)/.test-installed: pyproject.toml   # again only when the dependencies changed
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python -m compileall -q mailgate
	touch $@
