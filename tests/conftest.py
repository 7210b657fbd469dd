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


# ---- shared models (appended for test_model / test_cli; loading the default model takes ~25 s) ----

import pytest  # noqa: E402


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
