.PHONY: help install lint test bench demo

help:  ## Show the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install:  ## Create .venv and install the project with its dev extra
	python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'

lint:  ## ruff check, ruff format --check, mypy on the package (versions pinned in the dev extra)
	ruff check . && ruff format --check . && mypy iceberg_lake

test:  ## Run the test suite (the README's command)
	python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

bench:  ## Run every benchmark and print one table
	python scripts/bench.py

demo:  ## Run the end-to-end demo on embedded defaults
	lake demo
