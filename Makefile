# mmalign — `make quickstart` and `make test` work on a fresh machine with Python ≥ 3.10 and PyPI.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .cache/setup-$(shell $(PYTHON) -c "import sys; print('%d%d' % sys.version_info[:2])").stamp
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup quickstart test test-fast lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PIP) install -q -e '.[dev]'
	@mkdir -p .cache && touch $@

quickstart: setup
	$(PYTHON) scripts/quickstart.py

test: setup
	$(PYTHON) -m pytest -m "" -q

test-fast: setup
	$(PYTHON) -m pytest -q

lint: setup
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .

clean:
	rm -rf .cache runs
