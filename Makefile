.PHONY: install test test-all lint quickstart bench reports

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

# Each study: its sweep (recomputes only missing points), then its report.
reports:
	sdlab -m experiment=schedule_ablation model=gmm metrics=gmm prompts=none logger=none hydra.sweep.dir=reports/schedule_ablation/results
	sdlab-report reports/schedule_ablation/results --out reports/schedule_ablation --notes experiments/schedule_ablation/reading.md
	sdlab -m experiment=sampler_shootout model=gmm metrics=gmm prompts=none logger=none hydra.sweep.dir=reports/sampler_shootout/results
	sdlab-report reports/sampler_shootout/results --out reports/sampler_shootout --notes experiments/sampler_shootout/reading.md
	python experiments/convergence_orders/run.py
