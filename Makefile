# The two commands a newcomer needs:  make quickstart   and   make test
# Both create or reuse .venv/ (Python 3.12) and install what they need (tools/ensure_env.sh).
PY := .venv/bin/python

.PHONY: env quickstart test lint

env:
	@bash tools/ensure_env.sh

quickstart: env
	$(PY) examples/quickstart.py

test: env
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint:
	SEDD_EXTRAS=test,corpus,dev bash tools/ensure_env.sh
	$(PY) -m ruff check . && $(PY) -m black --check .
