# `make test` and `make demo` set everything up themselves: a .venv at the repository root,
# rebuilt whenever pyproject.toml is newer than the last install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: test lint demo docs tutorial bench quality study clean

FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools

test: lint
	$(PY) -m pytest -q --durations=10

# The documentation site (mkdocs.yml) into site/; open site/index.html. --strict: a broken link, a page missing
# from docs/README.md or a docstring reference that does not resolve fails the build. The docs extra on first use.
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# Rerun the tutorial notebook in place on the real Fashion-MNIST (about a minute), after editing a cell.
tutorial: $(STAMP)
	$(PY) tools/run_tutorial.py

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package; installed here when missing and root.
demo: $(STAMP)
	@test -f $(FASHION_MNIST) || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; }
	$(VENV)/bin/dimcl demo --out runs/demo

# The speed benchmark (benchmarks/speed/README.md), about 30 minutes on a 2-core CPU.
bench: $(STAMP)
	bash benchmarks/speed/run.sh

# The short-budget CPU table (benchmarks/quality/README.md): a resumable sweep, then its report. It runs
# on the Fashion-MNIST recipes as they were before tuning, kept in benchmarks/quality/short_budget_configs.
quality: $(STAMP)
	DIMCL_CONFIGS=benchmarks/quality/short_budget_configs \
		$(VENV)/bin/dimcl sweep --grid benchmarks/quality/fashion_mnist.yaml --out benchmarks/quality/results
	$(VENV)/bin/dimcl report benchmarks/quality/results --out benchmarks/quality/report.md

# The main CPU study (benchmarks/quality/README.md): many CPU-hours, resumable across sessions.
study: $(STAMP)
	bash benchmarks/quality/full/run.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info site .cache
