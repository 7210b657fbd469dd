"""draft_dtype: the learned drafters and sps's draft run in their own dtype beside the target.

The policy (`specbench.drafters.base.run_dtype`), that each method's drafter really runs in the dtype
asked for, that greedy output stays the target's in every dtype, and that sps's sampled output keeps
vanilla's distribution with a bfloat16 draft (its q comes from bfloat16 logits).
"""
from __future__ import annotations

import pytest
import torch

import specbench
from lossless import ALPHA, fit_pvalue, sample_counts, vanilla_joint
from specbench.drafters.base import run_dtype
from specbench.model import cpu_bfloat16_native
from specbench.sampling import SamplingParams
from specbench.strategies import make_proposer


@pytest.fixture(scope="module")
def target():
    return specbench.random_model(vocab_size=24, num_layers=3, hidden_size=32, seed=4, dtype="float32")


@pytest.fixture(scope="module")
def drafts(target):
    """A random drafter of each kind for the target, and a one-layer draft model for sps."""
    kinds = {kind: specbench.random_drafter(target, kind, seed=1) for kind in ("medusa", "eagle", "eagle3")}
    kinds["sps"] = specbench.random_model(vocab_size=24, num_layers=1, hidden_size=32, seed=5, dtype="float32")
    return kinds


def options(method: str, drafts: dict) -> dict:
    return {"draft": drafts["sps"]} if method == "sps" else {"drafter": drafts[method]}


def test_default_is_bfloat16_only_for_a_float32_target_on_a_cpu_with_native_bfloat16(target):
    expected = torch.bfloat16 if cpu_bfloat16_native() else torch.float32
    assert run_dtype(target, None) == expected
    f64 = specbench.random_model(dtype="float64")
    assert run_dtype(f64, None) == torch.float64
    assert run_dtype(target, "float32") == torch.float32
    assert run_dtype(f64, "bfloat16") == torch.bfloat16


@pytest.mark.parametrize("method", ["sps", "medusa", "eagle", "eagle3"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_drafter_runs_in_the_dtype_asked_and_greedy_output_is_the_targets(target, drafts, method, dtype):
    proposer = make_proposer(method, target, **options(method, drafts), draft_dtype=dtype)
    ran = proposer.draft if method == "sps" else proposer.drafter
    assert next(ran.parameters()).dtype == getattr(torch, dtype)
    drafted = multi = 0
    for seed in range(4):
        prompt = [(seed * 7 + 3 * i) % 24 for i in range(6)]
        vanilla = specbench.generate(target, prompt, max_new_tokens=24).token_ids
        out = specbench.generate(target, prompt, method=method, max_new_tokens=24, draft_dtype=dtype,
                                 **options(method, drafts))
        assert out.token_ids == vanilla, (method, dtype, seed)
        assert out.stats["draft_dtype"] == dtype
        drafted += sum(out.stats["draft_tokens"])
        multi += sum(a > 1 for a in out.stats["accepted_lengths"])
    assert drafted > 0 and multi > 0, "vacuous: nothing drafted or accepted"


def test_cast_copies_are_made_once_and_leave_the_drafter_as_it_was(target, drafts):
    eagle = drafts["eagle"]
    copy = eagle.cast(torch.bfloat16)
    assert eagle.cast(torch.bfloat16) is copy and eagle.cast(torch.float32) is eagle
    assert next(eagle.parameters()).dtype == torch.float32
    for (name, a), (_, b) in zip(eagle.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a.to(b.dtype), b), name


def test_sps_sampling_with_a_bfloat16_draft_matches_vanilla(target, drafts):
    """Chi-square at ALPHA = 1e-3 over the first 3 tokens of 1,200 seeded samples (as
    tests/test_lossless.py; its negative controls show that test's power): the draft samples from
    bfloat16 logits, and the verifier must see exactly that q."""
    prompt = [1, 2, 3] + specbench.generate(target, [1, 2, 3], max_new_tokens=9).token_ids
    params = SamplingParams(1.0)
    exact = vanilla_joint(target, prompt, params, 3)
    counts, stats = sample_counts(target, prompt, "sps", params, 1200, 3, draft=drafts["sps"], num_draft=3,
                                  draft_dtype="bfloat16")
    assert sum(sum(a > 1 for a in s["accepted_lengths"]) for s in stats) > 0, "vacuous: nothing accepted"
    assert fit_pvalue(counts, exact) > ALPHA


def test_sps_check_fails_when_the_verifier_sees_another_q(target, drafts, monkeypatch):
    """Negative control for the test above: the same check fails when the q handed to the verifier
    is not the one the draft sampled from (here squared and renormalised)."""
    from specbench.strategies import sps
    chain = sps.DraftTree.chain

    def sharpened(tokens, qs):
        q = qs ** 2
        return chain(tokens, q / q.sum(-1, keepdim=True))

    monkeypatch.setattr(sps.DraftTree, "chain", staticmethod(sharpened))
    prompt = [1, 2, 3] + specbench.generate(target, [1, 2, 3], max_new_tokens=9).token_ids
    params = SamplingParams(1.0)
    counts, _ = sample_counts(target, prompt, "sps", params, 1200, 3, draft=drafts["sps"], num_draft=3,
                              draft_dtype="bfloat16")
    assert fit_pvalue(counts, vanilla_joint(target, prompt, params, 3)) < ALPHA


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["sps", "medusa", "eagle", "eagle3"])
def test_cuda_drafters_in_another_dtype_than_the_target(method):
    """On CUDA the default is the target's dtype; a float32 drafter beside a bfloat16 target runs
    through the same captured (and compiled) draft steps and leaves the output the target's."""
    target = specbench.random_model(vocab_size=64, num_layers=3, hidden_size=64, seed=1).to("cuda", torch.bfloat16)
    drafts = {kind: specbench.random_drafter(target, kind, seed=0) for kind in ("medusa", "eagle", "eagle3")}
    drafts["sps"] = specbench.random_drafter(target, "draft", seed=0, num_layers=1)
    assert run_dtype(target, None) == torch.bfloat16
    prompt = [1, 2, 3, 4, 5, 1, 2, 3]
    vanilla = specbench.generate(target, prompt, max_new_tokens=32, chat=False).token_ids
    for dtype in (None, "float32"):
        out = specbench.generate(target, prompt, method=method, max_new_tokens=32, chat=False, draft_dtype=dtype,
                                 **options(method, drafts))
        assert out.token_ids == vanilla, dtype
        assert sum(out.stats["draft_tokens"]) > 0


def test_a_cast_copy_follows_changes_to_the_drafter(target, drafts):
    """A drafter trained or loaded into in place after a generation must not leave a stale copy."""
    from specbench.drafters.draft import draft_in
    eagle = specbench.random_drafter(target, "eagle", seed=3)
    first = eagle.cast(torch.bfloat16)
    with torch.no_grad():
        eagle.fc.weight.mul_(2)
    second = eagle.cast(torch.bfloat16)
    assert second is not first and torch.equal(second.fc.weight, eagle.fc.weight.to(torch.bfloat16))
    assert eagle.cast(torch.bfloat16) is second
    sps_draft = specbench.random_model(vocab_size=24, num_layers=1, hidden_size=32, seed=6)
    before = draft_in(sps_draft, torch.bfloat16)
    with torch.no_grad():
        sps_draft.layers[0].w2.weight.zero_()
    after = draft_in(sps_draft, torch.bfloat16)
    assert after is not before and not after.layers[0].w2.weight.any()
