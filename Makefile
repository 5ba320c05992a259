# The README's two commands: `make quickstart` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test bench quickstart experiments clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# the package and its runtime dependencies
$(VENV)/.installed: setup.py | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

# plus pytest and the CPU torch wheel (SSCD conversion tests)
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,sscd]'
	touch $@

test: $(VENV)/.installed-test
	$(PY) -m pytest -q tests

quickstart: $(VENV)/.installed
	$(PY) -m jaxrepro.main --config=configs/quickstart.py --workdir=runs/quickstart_n32
	$(PY) -m jaxrepro.main --config=configs/quickstart.py:n=1797 --workdir=runs/quickstart_n1797
	$(PY) experiments/quickstart_report.py runs/quickstart_n32 runs/quickstart_n1797

# the small variant of every experiment (digits, CPU); each writes results.json + PNGs under runs/experiments/
experiments: $(VENV)/.installed
	$(PY) experiments/regimes.py
	$(PY) experiments/theory.py
	$(PY) experiments/hyperplane.py
	$(PY) experiments/churn.py
	$(PY) experiments/cross_model.py
	$(PY) experiments/conditional.py
	$(PY) experiments/inverse_problems.py
	$(PY) experiments/invertibility.py
	$(PY) experiments/jacobian_rank.py
	$(PY) experiments/finetune.py
	$(PY) experiments/which_map.py
	$(PY) experiments/disjoint.py
	$(PY) experiments/smoothing.py

bench: $(VENV)/.installed-test
	$(PY) benchmarks/oracle.py
	$(PY) benchmarks/train.py --steps 3
	$(PY) benchmarks/descriptors.py
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
