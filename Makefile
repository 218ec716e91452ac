# fm — make install | test | test-all | demo | demo-images | docs | bench
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: install test test-all demo demo-images docs bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The fast suite (slow tests are marked and excluded; see pyproject.toml).
test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

# The main job on CPU: four methods + reflow on a 2D task, results table and figure in demo_out/.
demo: install
	$(PY) experiments/toy2d/demo.py --workdir demo_out

# Images on CPU: the smoke UNet with icfm and otcfm on the offline CIFAR-10 copy; grids side by side in demo_images/.
demo-images: install
	$(PY) experiments/images/demo.py --workdir demo_images

# The documentation site (docs/, mkdocs.yml) into site/; --strict fails on any warning (broken link, bad docstring).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev,docs]"
	touch $(DOCS_STAMP)

bench: install
	bash experiments/benchmarks/run.sh

clean:
	rm -rf $(VENV) demo_out demo_images site .pytest_cache
