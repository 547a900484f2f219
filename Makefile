# The README's two commands: `make demo` and `make test`. Both set themselves up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Extra pytest flags, e.g. make test PYTEST_ARGS="-x -k decoding". Two workers: much of
# the suite is compile and Python time, which a second process overlaps.
PYTEST_ARGS ?=

.PHONY: install test demo bench lock clean

install: $(STAMP)

# A fresh virtualenv with the package (editable) and its test extras, every version
# pinned by requirements/constraints.txt.
$(STAMP): setup.py requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests -q -n 2 --dist loadfile $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m prompt_tuning.demo

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# Re-resolve the pins after changing setup.py (review the diff before committing).
lock:
	rm -rf /tmp/pt-lock && $(PYTHON) -m venv /tmp/pt-lock
	/tmp/pt-lock/bin/pip install --quiet -e ".[test]"
	{ head -2 requirements/constraints.txt; /tmp/pt-lock/bin/pip freeze --exclude-editable; } \
	  > requirements/constraints.txt.new && mv requirements/constraints.txt.new requirements/constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info
