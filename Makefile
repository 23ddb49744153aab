.PHONY: install test test-all lint quickstart bench

install:
	pip install -e ".[dev]"

test:
	python -m pytest

test-all:
	python -m pytest -m ""

lint:
	ruff check sdlab tests benchmarks experiments

quickstart:
	sdlab -m

bench:
	for f in benchmarks/*.py; do python $$f || exit 1; done
