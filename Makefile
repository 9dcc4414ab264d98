# Entry points: `make demo`, `make test` (the full suite, what CI runs) and `make test-fast`
# (the inner loop: tests not marked `slow`). Each creates .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Material for MkDocs prints a banner about MkDocs 2.0 on every build unless this is set.
export NO_MKDOCS_2_WARNING := 1

# pytest workers (pytest-xdist; whole test files per worker, so module fixtures run once, and
# the longest first: tests/conftest.py): CI has 2 cores. `make test PYTEST_WORKERS=0` runs in
# one process.
PYTEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile \
	--no-loadscope-reorder

.PHONY: demo test test-fast docs docs-check lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/condmonge demo --out demo_out

# ruff, the documentation site built without executing the tutorials (prose, links, API
# pages; --strict), then pytest (last, so that its summary line closes the output), which
# executes every tutorial as the site build does (tests/test_tutorials.py, marked slow), in
# parallel with the other tests: a failing tutorial fails the target.
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	CONDMONGE_DOCS_EXECUTE=false $(MAKE) --no-print-directory docs-check
	$(PYTEST)

# The site in site/ (open site/index.html); tutorials run on every build.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# The same build into a temporary directory; `make test` runs it with
# CONDMONGE_DOCS_EXECUTE=false (the tutorials run in pytest instead).
docs-check: $(STAMP)
	tmp=$$(mktemp -d) && start=$$(date +%s) && \
	$(BIN)/mkdocs build --strict --quiet --site-dir $$tmp; rc=$$?; \
	echo "docs: built (tutorials executed: $${CONDMONGE_DOCS_EXECUTE:-true}) in $$(( $$(date +%s) - start )) s (exit $$rc)"; \
	rm -rf $$tmp; exit $$rc

test-fast: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(PYTEST) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) demo_out site
