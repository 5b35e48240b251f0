# One-command set-up: `make run` serves, `make test` tests, `make lint` checks, `make bench` measures.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8800
DATA   ?= ./data

.PHONY: install test run bench bench-peers lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# This checkout comes first on the path (its subprocesses' too), whatever .venv's editable install
# points at.
test lint: export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -rs

# Style, types, and the import contracts of the tiers (.importlinter); the test extras bring the tools.
lint: $(STAMP)
	$(VENV)/bin/ruff check
	$(VENV)/bin/mypy --strict ooo_storage
	$(VENV)/bin/lint-imports --no-logo

run: $(STAMP)
	$(VENV)/bin/ooo-storage serve --host $(HOST) --port $(PORT) --data $(DATA)

# Every benchmark, one after the other; each prints a markdown table (figures go to bench/RESULTS.md).
BENCHES := bench/core.py bench/adapters.py bench/http_writes.py bench/http_front.py bench/fanout.py bench/hostile.py

bench: $(STAMP)
	@for b in $(BENCHES); do if [ -f $$b ]; then echo "== $$b"; $(PY) $$b || exit 1; fi; done

# Side by side with etcd and NATS KV (bench/peers/README.md); installs them if missing (apt needs root).
bench-peers: $(STAMP)
	$(PY) bench/peers/peers.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
