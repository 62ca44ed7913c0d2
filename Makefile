# Two entry points for a new user (see README): `make demo` and `make test`.
# Both create .venv and install everything first; torch is pinned to the CPU wheel
# through .ci/constraints.txt so no CUDA packages are pulled.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml .ci/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c .ci/constraints.txt -e ".[dev,examples]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/raymedic demo

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) *.egg-info
