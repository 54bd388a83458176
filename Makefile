# Task runner. `make demo` and `make test` are the README's two commands.
PY := .venv/bin/python
STUDY ?= studies/ablation_A.yaml

.PHONY: install demo test test-fast lint bench clean-local

install:
	bash scripts/install.sh

# The main job in the local world: synthetic data, a locally trained teacher, the ablation study on CPU.
demo: install
	$(PY) -m tinysiglip.sweep $(STUDY) --local --resume
	$(PY) -m tinysiglip.dashboards --study-file $(STUDY) --local
	$(PY) -m tinysiglip.report --study-file $(STUDY) --local

test: install
	bash scripts/test.sh

test-fast: install
	$(PY) -m pytest -q -m "not slow and not browser and not postgres"

lint:
	.venv/bin/ruff check tinysiglip tests bench
	.venv/bin/ruff format --check tinysiglip tests bench

bench: install
	$(PY) -m bench.run_all

clean-local:
	rm -rf .tinysiglip runs
