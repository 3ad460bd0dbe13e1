# The two commands a newcomer needs:  make quickstart   and   make test
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 1

.PHONY: env quickstart test lint

env:
	@bash tools/ensure_env.sh

quickstart: env
	$(PY) examples/quickstart.py

test: env
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint:
	SEDD_EXTRAS=dev bash tools/ensure_env.sh
	$(PY) -m ruff check . && $(PY) -m black --check .
