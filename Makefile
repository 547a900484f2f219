# The README's two commands: `make demo` and `make test`. Both set themselves up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Extra pytest flags, e.g. make test PYTEST_ARGS="-x -k decoding". Two workers: much of
# the suite is compile and Python time, which a second process overlaps.
PYTEST_ARGS ?=

# The `t5` package is only the tests' reference for task formats and metrics
# (tests/test_tasks_t5_parity.py imports its preprocessors, postprocessors and
# metrics). Its declared dependencies (mesh-tensorflow, seqio-nightly,
# tfds-nightly, ...) would replace our pins, so it is installed without them;
# what those modules need (babel, scipy, editdistance) comes with ".[test]".
T5_REFERENCE = $(PY) -m pip install --quiet --no-deps -c requirements/constraints.txt t5

.PHONY: install test demo bench lock clean

install: $(STAMP)

# A fresh virtualenv with the package (editable) and its test extras, every version
# pinned by requirements/constraints.txt.
$(STAMP): setup.py requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[test]"
	$(T5_REFERENCE)
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
	/tmp/pt-lock/bin/pip install --quiet --no-deps "t5==$$(sed -n 's/^t5==//p' requirements/constraints.txt)"
	{ head -2 requirements/constraints.txt; /tmp/pt-lock/bin/pip freeze --exclude-editable; } \
	  > requirements/constraints.txt.new && mv requirements/constraints.txt.new requirements/constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info
