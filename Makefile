PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: install demo test test-e2e test-slow

install: .installed.stamp

.installed.stamp: pyproject.toml .ci/install
	PYTHON=$(PYTHON) bash .ci/install
	touch $@

demo: install  ## the main job: full vs cached sampling on the shipped model
	$(PYTHON) -m ditcache demo

test: install  ## the fast test suite (under 3 minutes on 2 CPU cores)
	$(PYTHON) -m pytest -m "not slow and not e2e" -q -n auto $(PYTEST_ARGS)

test-e2e: install  ## the demo and the benchmark scripts end to end on tiny models (minutes)
	$(PYTHON) -m pytest -m "e2e and not slow" -q -n auto $(PYTEST_ARGS)

test-slow: install  ## full-size models and long compiles too
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)
