# One-command set-up: `make run` serves, `make test` tests, `make bench` measures.
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

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

run: $(STAMP)
	$(VENV)/bin/ooo-storage serve --host $(HOST) --port $(PORT) --data $(DATA)

# Every benchmark, one after the other; each prints a markdown table (figures go to bench/RESULTS.md).
BENCHES := bench/core.py bench/adapters.py bench/http_writes.py bench/fanout.py bench/hostile.py

bench: $(STAMP)
	@for b in $(BENCHES); do if [ -f $$b ]; then echo "== $$b"; $(PY) $$b || exit 1; fi; done

# Side-by-side against etcd and NATS KV (installs them with apt/pip if missing; needs root for apt).
bench-peers: $(STAMP)
	$(PY) bench/peers.py

lint: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check ruff
	$(VENV)/bin/ruff check ooo_storage tests bench examples

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
