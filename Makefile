# The two commands: `make demo` and `make test`. Both set up first when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
SETUP_INPUTS := scripts/setup.sh scripts/build_interfaces.sh requirements/ros-wheels.txt constraints.txt \
	setup.py setup.cfg package.xml $(shell find ros2_ws/src -type f 2>/dev/null)
PYTEST_ARGS ?= -n 2

.PHONY: setup test test-fast demo lint bench clean distclean

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Unit tests without the slow ones (no DDS, no model training, no colcon): under a minute.
test-fast: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow" tests/unit

demo: $(STAMP)
	$(VENV)/bin/llava3d-ros demo --out demo_out

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/grounding.py

clean:
	rm -rf build demo_out .pytest_cache

distclean: clean
	rm -rf $(VENV)
