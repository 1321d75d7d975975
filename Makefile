# mmalign — `make quickstart` and `make test` work on a fresh machine with Python ≥ 3.10 and PyPI.
# Everything installs into .venv (created with --system-site-packages, so packages the machine
# already has, e.g. a local torch build, are reused rather than downloaded again).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup quickstart quickstart-fast test test-fast lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -e '.[dev,demo]'
	# the web-UI test drives Debian's chromium (root installs it; others: apt-get install chromium)
	command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	touch $@

quickstart: setup
	$(PY) scripts/quickstart.py

quickstart-fast: setup
	$(PY) scripts/quickstart.py --fast --runs runs/fast

test: setup
	$(PY) -m pytest -m "" -q

test-fast: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) runs
