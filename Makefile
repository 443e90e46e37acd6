PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: install demo test test-slow

install: .installed.stamp

.installed.stamp: pyproject.toml .ci/install
	PYTHON=$(PYTHON) bash .ci/install
	touch $@

demo: install  ## the main job: full vs cached sampling on the shipped model
	$(PYTHON) -m ditcache demo

test: install  ## the test suite (minutes on 2 CPU cores)
	$(PYTHON) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-slow: install  ## full-size models and long compiles too
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)
