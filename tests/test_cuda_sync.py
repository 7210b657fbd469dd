"""On a GPU only (skipped elsewhere): a greedy or sampled step synchronises with the host once.

The engine verifies greedily and commits the cache on the device, then reads the step's result in
one transfer (`engine._commit_greedy`). Proposers that keep their work on the device (vanilla,
prompt lookup, lookahead, self-speculative early exit, Medusa, sps, EAGLE's static and dynamic trees: the dynamic tree's shape
stays on the device as its ancestor mask) then cost one host synchronisation per step in all; the
counter is `specbench.timing.counting_syncs` (torch's sync debug mode). A sampled step with a
deterministic draft reads once too: `verify_tree` reads the acceptance probabilities, the final
draws made ahead for every row (`TorchRandom.ahead`) and the engine's tokens in one transfer.
"""
import pytest
import torch

import specbench
from specbench import engine
from specbench.timing import counting_syncs

pytestmark = pytest.mark.cuda

STEP_PHASES = ("draft", "forward", "verify", "host")


@pytest.fixture(scope="module")
def target():
    return specbench.random_model(vocab_size=64, num_layers=3, hidden_size=64, num_heads=4,
                                  num_kv_heads=2, seed=1).to("cuda")


def step_syncs(target, method: str, **options) -> tuple[int, int]:
    """Synchronisations and steps that 40 new tokens add over 24: what happens once per generation
    (the prompt's prefill; sps's draft catching up on the prompt in its first step) cancels."""
    prompt = [1, 2, 3, 4, 5, 1, 2, 3]
    specbench.generate(target, prompt, method=method, max_new_tokens=8, chat=False, **options)  # capture
    counts = []
    for tokens in (24, 40):
        with counting_syncs():
            stats = specbench.generate(target, prompt, method=method, max_new_tokens=tokens, chat=False,
                                       **options).stats
        counts.append((sum(stats["host_syncs"][p] for p in STEP_PHASES), stats["steps"]))
    (syncs_short, steps_short), (syncs_long, steps_long) = counts
    assert steps_long > steps_short
    return syncs_long - syncs_short, steps_long - steps_short


def options_for(target, method: str) -> dict:
    if method == "medusa":
        return {"drafter": specbench.random_drafter(target, "medusa", seed=0)}
    if method == "sps":
        return {"draft": specbench.random_drafter(target, "draft", seed=0, num_layers=1)}
    if method.startswith("eagle"):
        return {"drafter": specbench.random_drafter(target, "eagle", seed=0), "tree": method.split("_")[1]}
    return {}


@pytest.mark.parametrize("method", ["vanilla", "pld", "lookahead", "early_exit", "medusa", "sps", "eagle_static",
                                    "eagle_dynamic"])
def test_one_sync_per_greedy_step(target, method):
    name = method.split("_")[0] if method.startswith("eagle") else method    # eagle_static: method eagle
    syncs, steps = step_syncs(target, name, **options_for(target, method))
    assert syncs == steps, f"{method}: {syncs} host synchronisations in {steps} steps"


@pytest.mark.parametrize("method", ["vanilla", "pld", "lookahead", "early_exit", "medusa", "sps", "eagle_static",
                                    "eagle_dynamic"])
def test_one_sync_per_sampled_step(target, method):
    """Temperature 1: the verifier reads the acceptance probabilities, the draws made ahead and
    the engine's tokens and argmax in one transfer, for deterministic drafts and for the sampled
    chains of sps and early exit (their draws stay on the device)."""
    name = method.split("_")[0] if method.startswith("eagle") else method
    syncs, steps = step_syncs(target, name, temperature=1.0, **options_for(target, method))
    assert syncs == steps, f"{method}: {syncs} host synchronisations in {steps} sampled steps"


def test_an_extra_read_is_counted(target, monkeypatch):
    """Negative control: a verifier that reads the device once more is caught."""
    commit = engine._commit_greedy

    def reads_twice(tree, logits, anc, cache):
        logits.argmax(-1).tolist()
        return commit(tree, logits, anc, cache)

    monkeypatch.setattr(engine, "_commit_greedy", reads_twice)
    syncs, steps = step_syncs(target, "vanilla")
    assert syncs == 2 * steps


def test_eager_attention_builds_no_cudnn_plan_per_shape():
    """cuDNN's SDPA builds a plan for each new shape on the host (50 ms on the H200: EAGLE's draft
    prefill paid it once per prompt length). Negative control: plain SDPA with the same masked,
    unaligned shape selects cuDNN where it is enabled, so the check can see it."""
    from torch.profiler import ProfilerActivity, profile

    from specbench import numerics

    q = torch.randn(57, 6, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 57, 64, device="cuda", dtype=torch.bfloat16)
    mask = torch.ones(57, 57, dtype=torch.bool, device="cuda").tril()

    def cudnn_ops(fn) -> int:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
            torch.cuda.synchronize()
        return sum("cudnn" in e.key for e in prof.key_averages())

    assert cudnn_ops(lambda: numerics.sdpa(q, k, k, mask)) == 0
    rows = q.transpose(0, 1).reshape(1, 2, 3 * 57, 64)
    if torch.backends.cuda.cudnn_sdp_enabled():
        assert cudnn_ops(lambda: torch.nn.functional.scaled_dot_product_attention(
            rows, k[None], k[None], attn_mask=mask.repeat(3, 1))) > 0
