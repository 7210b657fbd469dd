"""Proofs 2 and 4: end-to-end output distributions of every strategy against exact vanilla.

Each check samples the first 3 tokens N_SAMPLES times with seeds 0..N-1 on a random float64 model
(vocabulary 16) and applies a chi-square test at ALPHA = 1e-3 against the exact vanilla joint
distribution. Seeds are fixed, so results are deterministic; a correct implementation would fail a
given check with probability 1e-3. Power is shown by negative controls: an always-accepting
verifier and the lossy confidence early exit must both fail the very same check.
"""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import specbench
import specbench.engine
from specbench.sampling import SamplingParams
from specbench.verify import VerifyResult
from lossless import ALPHA, fit_pvalue, sample_counts, vanilla_joint

N_SAMPLES = 1200
LENGTH = 3


@pytest.fixture(scope="module")
def target():
    return specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=1, dtype="float64")


@pytest.fixture(scope="module")
def prompt(target):
    """The target's own greedy continuation of [1, 2, 3]: it cycles, so lookup-based drafts are
    likely tokens and every method gets multi-token acceptances (checked: no vacuous test)."""
    return [1, 2, 3] + specbench.generate(target, [1, 2, 3], max_new_tokens=13).token_ids


@pytest.fixture(scope="module")
def draft():
    return specbench.random_model(vocab_size=16, num_layers=1, hidden_size=32, seed=2, dtype="float64")


def method_options(method: str, draft, target) -> dict:
    if method == "medusa":   # a drafter is made for one target: drawn for this one
        return {"drafter": specbench.random_drafter(target, "medusa", seed=0), "tree": 12}
    if method.startswith("eagle"):
        return {"drafter": specbench.random_drafter(target, method_name(method), seed=0), "tree": method.split("_")[1],
                "depth": 3, "draft_top_k": 4, "total_tokens": 12}
    return {"pld": {"max_ngram": 3, "num_draft": 4},
            "sps": {"draft": draft, "num_draft": 3},
            "early_exit": {"exit_layer": 1, "num_draft": 3},
            "lookahead": {}}[method]


LOSSLESS = ["pld", "sps", "early_exit", "lookahead", "medusa", "eagle_static", "eagle_dynamic"]


def method_name(label: str) -> str:
    """eagle_static / eagle_dynamic are one method with two trees (eagle3_dynamic: method eagle3)."""
    return label.split("_")[0] if label.startswith("eagle") else label


def check(target, prompt, method, params, **options):
    exact = vanilla_joint(target, prompt, params, LENGTH)
    counts, stats = sample_counts(target, prompt, method, params, N_SAMPLES, LENGTH, **options)
    return fit_pvalue(counts, exact), stats


@pytest.mark.parametrize("method", LOSSLESS)
@settings(max_examples=2)
@given(temperature=st.sampled_from([0.7, 1.0, 1.4]), top_k=st.sampled_from([0, 5]),
       top_p=st.sampled_from([1.0, 0.8]))
def test_sampling_matches_vanilla(target, prompt, draft, method, temperature, top_k, top_p):
    params = SamplingParams(temperature, top_k, top_p)
    pvalue, stats = check(target, prompt, method_name(method), params, **method_options(method, draft, target))
    drafted = sum(sum(s["draft_tokens"]) for s in stats)
    multi = sum(sum(a > 1 for a in s["accepted_lengths"]) for s in stats)
    assert drafted > 0 and multi > 0, "the check is vacuous: nothing was drafted or accepted"
    assert pvalue > ALPHA, f"{method} output distribution differs from vanilla (p = {pvalue:.2e})"


def test_eagle3_sampling_matches_vanilla(target, prompt):
    """EAGLE-3 (its own draft head and hidden-state feedback; the same trees and verifier as
    EAGLE-2, so one setting of the processors suffices): temperature 1 with top-k 5."""
    pvalue, stats = check(target, prompt, "eagle3", SamplingParams(1.0, 5, 1.0),
                          **method_options("eagle3_dynamic", None, target))
    assert sum(sum(a > 1 for a in s["accepted_lengths"]) for s in stats) > 0, "vacuous: nothing accepted"
    assert pvalue > ALPHA, f"eagle3 output distribution differs from vanilla (p = {pvalue:.2e})"


@pytest.fixture(scope="module")
def exported_draft(target, tmp_path_factory):
    """A draft through every folder form: the target's first 2 layers saved compact (layers only),
    materialised on the target, written as a Hugging Face folder, loaded back with load_model."""
    import torch

    from specbench.drafters.draft import DraftLayers
    tmp = tmp_path_factory.mktemp("draft")
    drafter = DraftLayers.for_target(target, num_layers=2, init="target")
    drafter.init_from_target(target)
    compact = drafter.save(tmp / "compact", dtype=torch.float64)
    full = specbench.save_model(specbench.load_draft(compact, target), tmp / "full")
    return specbench.load_model(full, dtype="float64")


@settings(max_examples=2)
@given(temperature=st.sampled_from([0.7, 1.0, 1.4]), top_k=st.sampled_from([0, 5]),
       top_p=st.sampled_from([1.0, 0.8]))
def test_sampling_matches_vanilla_with_an_exported_draft(target, prompt, exported_draft, temperature, top_k, top_p):
    params = SamplingParams(temperature, top_k, top_p)
    pvalue, stats = check(target, prompt, "sps", params, draft=exported_draft, num_draft=3)
    assert sum(sum(a > 1 for a in s["accepted_lengths"]) for s in stats) > 0, "vacuous: nothing accepted"
    assert pvalue > ALPHA, f"sps with an exported draft differs from vanilla (p = {pvalue:.2e})"


def test_sampling_matches_vanilla_with_a_reduced_draft_vocabulary(target, prompt):
    """draft_vocab: the draft samples from 8 of the 16 tokens (q = 0 on the others)."""
    import torch

    from specbench.drafters.draft import DraftLayers
    drafter = DraftLayers.for_target(target, num_layers=2, init="target")
    drafter.init_from_target(target)
    drafter.token_counts += torch.bincount(torch.tensor(prompt), minlength=16)
    pvalue, stats = check(target, prompt, "sps", SamplingParams(1.0), draft=drafter, num_draft=3, draft_vocab=8)
    assert sum(sum(a > 1 for a in s["accepted_lengths"]) for s in stats) > 0, "vacuous: nothing accepted"
    assert pvalue > ALPHA, f"sps with draft_vocab differs from vanilla (p = {pvalue:.2e})"


def test_sampling_matches_vanilla_with_draft_stop(target, prompt, draft):
    """draft_stop: a chain of up to 3 stops once the draft's own probability of its token falls
    below 0.5. The stop depends on the draft's tokens only, so the chain stays a valid proposal."""
    pvalue, stats = check(target, prompt, "sps", SamplingParams(1.0), draft=draft, num_draft=3, draft_stop=0.5,
                          siblings=1)
    lengths = Counter(n for s in stats for n in s["draft_tokens"])
    assert lengths[3] > 0 and lengths[1] + lengths[2] > 0, f"vacuous: chains of one length only ({lengths})"
    assert sum(sum(a > 1 for a in s["accepted_lengths"]) for s in stats) > 0, "vacuous: nothing accepted"
    assert pvalue > ALPHA, f"sps with draft_stop differs from vanilla (p = {pvalue:.2e})"


def test_negative_control_draft_stop_with_biased_draws_fails(target, prompt, draft, monkeypatch):
    """The same check catches a chain whose tokens are not drawn from the q it reports: each draft
    token the likelier of two draws (a plausible "retry an unconfident token" bug)."""
    from specbench.sampling import draw
    from specbench.strategies import sps

    def likelier_of_two(q, params, generator):
        a, b = draw(q, params, generator), draw(q, params, generator)
        return a if q[a] >= q[b] else b
    monkeypatch.setattr(sps, "draw", likelier_of_two)
    pvalue, _ = check(target, prompt, "sps", SamplingParams(1.0), draft=draft, num_draft=3, draft_stop=0.5,
                      siblings=1)
    assert pvalue < ALPHA


def accepted_through_a_sibling(monkeypatch) -> list[bool]:
    """Record, for every sps step, whether the verifier's accepted path began at a sibling."""
    from specbench.verify import verify_tree
    seen: list[bool] = []

    def recording(tree, p, greedy, rng, read_along=None):
        result = verify_tree(tree, p, greedy, rng, read_along)
        seen.append(bool(result.accepted) and result.accepted[0] != 0)
        return result
    monkeypatch.setattr(specbench.engine, "verify_tree", recording)
    return seen


def test_sampling_matches_vanilla_with_siblings(target, prompt, draft, monkeypatch):
    """siblings=3: the draft's 2nd and 3rd most likely first tokens, verified beside the chain's
    sampled first token as fixed picks (one-hot q). Paths through a sibling must occur."""
    through_sibling = accepted_through_a_sibling(monkeypatch)
    pvalue, stats = check(target, prompt, "sps", SamplingParams(1.0), draft=draft, num_draft=3, draft_stop=0,
                          siblings=3)
    assert any(through_sibling), "vacuous: no path went through a sibling"
    assert sum(sum(a > 1 for a in s["accepted_lengths"]) for s in stats) > 0, "vacuous: nothing accepted"
    assert pvalue > ALPHA, f"sps with siblings differs from vanilla (p = {pvalue:.2e})"


def test_negative_control_siblings_with_the_draft_q_fails(target, prompt, draft, monkeypatch):
    """The same check catches siblings reported to the verifier with the draft's distribution
    instead of the one-hot q of a fixed pick (it then accepts them as if they had been sampled)."""
    import torch

    from specbench.strategies import sps
    from specbench.tree import DraftTree

    correct = sps.with_siblings

    def sampled_looking(chain, picks):
        tree = correct(chain, picks)
        q = torch.cat([chain.q[:1], chain.q[:1].expand(len(picks), -1), chain.q[1:]])
        return DraftTree(tokens=tree.tokens, parents=tree.parents, q=q)
    monkeypatch.setattr(sps, "with_siblings", sampled_looking)
    pvalue, _ = check(target, prompt, "sps", SamplingParams(1.0), draft=draft, num_draft=3, draft_stop=0,
                      siblings=3)
    assert pvalue < ALPHA


def test_vanilla_matches_enumeration(target, prompt):
    pvalue, _ = check(target, prompt, "vanilla", SamplingParams(1.0))
    assert pvalue > ALPHA


def always_accept(tree, p, greedy, rng, read_along):
    """A broken verifier: accepts the whole first chain, then samples the bonus from the target."""
    path, row = [], 0
    while True:
        kids = [i for i, par in enumerate(tree.parents.tolist()) if par == row - 1]
        if not kids:
            return VerifyResult(path, rng.categorical(p[row]), read_along.tolist())
        path.append(kids[0])
        row = kids[0] + 1


def test_negative_control_broken_verifier_fails(target, prompt, draft, monkeypatch):
    monkeypatch.setattr(specbench.engine, "verify_tree", always_accept)
    pvalue, _ = check(target, prompt, "sps", SamplingParams(1.0), draft=draft, num_draft=3)
    assert pvalue < ALPHA


def without_residual(tree, p, greedy, rng, read_along):
    """A broken verifier: tries every child against the target distribution itself, never against
    the residual its rejected elder siblings leave (deterministic drafts: accept x w.p. p(x))."""
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    path, row = [], 0
    while True:
        for child in [i for i, par in enumerate(parents) if par == row - 1]:
            if rng.bernoulli(float(p[row, tokens[child]])):
                path.append(child)
                row = child + 1
                break
        else:
            return VerifyResult(path, rng.categorical(p[row]), read_along.tolist())


@pytest.mark.parametrize("method", ["eagle_dynamic", "eagle3_dynamic"])
def test_negative_control_tree_without_residual_fails(target, prompt, method, monkeypatch):
    """EAGLE's sibling trees need the residual update: the same check rejects a verifier without it
    (the dynamic trees; the static one goes through the same verifier)."""
    monkeypatch.setattr(specbench.engine, "verify_tree", without_residual)
    pvalue, _ = check(target, prompt, method_name(method), SamplingParams(1.0), **method_options(method, None, target))
    assert pvalue < ALPHA


def test_confidence_early_exit_is_lossy(target, prompt):
    """The lossy label is earned: the same check rejects confidence-based early exit."""
    pvalue, stats = check(target, prompt, "early_exit", SamplingParams(1.0), mode="confidence",
                          exit_layers=[1, 2], thresholds=0.3)
    assert stats[0]["lossless"] is False
    assert pvalue < ALPHA


def test_medusa_typical_acceptance_is_lossy(target, prompt):
    """Medusa's typical acceptance is labelled lossy, and the same check rejects it."""
    pvalue, stats = check(target, prompt, "medusa", SamplingParams(1.0), acceptance="typical",
                          **method_options("medusa", None, target))
    assert stats[0]["lossless"] is False
    assert pvalue < ALPHA


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_identical_float64(draft, seed):
    target = specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=10 + seed, dtype="float64")
    prompt = [(seed + i) % 5 for i in range(12)]
    vanilla = specbench.generate(target, prompt, max_new_tokens=40).token_ids
    for method in LOSSLESS:
        single = {"lookahead": {}, "medusa": {"tree": 1}, "eagle_static": {"total_tokens": 1},
                  "eagle_dynamic": {"total_tokens": 1}}.get(method, {"num_draft": 1})
        for options in (method_options(method, draft, target), single):
            opts = {**method_options(method, draft, target), **options}
            out = specbench.generate(target, prompt, method=method_name(method), max_new_tokens=40, **opts)
            assert out.token_ids == vanilla, (method, opts)
            assert out.stats["lossless"] is True
