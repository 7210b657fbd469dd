import os

import torch
from hypothesis import settings

# The suite runs on one torch thread: on a 2-core machine with any other load, two OpenMP threads
# make small forwards up to 100x slower, and one thread keeps test times predictable.
torch.set_num_threads(1)

# "ci" is deterministic, so a red test stays red; "slow" searches wider (HYPOTHESIS_PROFILE=slow).
settings.register_profile("ci", derandomize=True, max_examples=150, deadline=None)
settings.register_profile("slow", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ---- CUDA tests --------------------------------------------------------------------------------

import pytest  # noqa: E402

# test_kernels and test_numerics set TRITON_INTERPRET=1 when imported (their kernels run in
# Triton's interpreter on CPU tensors); kernels defined after that are interpreted for the whole
# process, and there the CUDA tests fail. `make test` on a GPU machine then runs them in a process
# of their own (`make test-cuda`).


def cuda_skip_reason(cuda_available: bool, environ) -> str | None:
    """Why the tests marked `cuda` cannot run in this process, or None when they can."""
    if not cuda_available:
        return "needs a CUDA device"
    if environ.get("TRITON_INTERPRET") == "1":
        return ("TRITON_INTERPRET=1 in this process (set by the interpreter's tests): the CUDA tests run "
                "in a process of their own, `make test-cuda` (`make test` runs it on a GPU machine)")
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device and compiled (not interpreted) Triton kernels")


def pytest_collection_modifyitems(config, items):
    reason = cuda_skip_reason(torch.cuda.is_available(), os.environ)
    if reason:
        for item in items:
            if item.get_closest_marker("cuda"):
                item.add_marker(pytest.mark.skip(reason=reason))


# ---- shared models (appended for test_model / test_cli; loading the default model takes ~25 s) ----


@pytest.fixture(scope="session")
def default_model():
    """specbench's default model (SmolLM2-135M-Instruct from the packaged GGUF), fp32 on CPU, loaded once."""
    import specbench
    return specbench.load_model()


@pytest.fixture(scope="session")
def hf_default_model(default_model):
    """transformers' reference for the default model, built from the same GGUF (fp32, eval)."""
    import torch
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(**default_model.hf_source, dtype=torch.float32)
    return hf.eval().requires_grad_(False)
